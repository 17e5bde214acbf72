//! Calling another node's API (the primary's `/handoff`, `replite status`'s `/info`).

use std::time::Duration;

use crate::driver::Status;

/// How long an API call may take: these are small requests to a node on the same network.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// An API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer, or not HTTP.
    #[error("{url}: {source}")]
    Request {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The node answered with an error.
    #[error("{url}: {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// What it said.
        body: String,
    },
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(API_TIMEOUT).build().unwrap_or_default()
}

async fn checked(
    url: &str,
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<reqwest::Response, ApiError> {
    let response = response.map_err(|source| ApiError::Request { url: url.to_owned(), source })?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(ApiError::Status { url: url.to_owned(), status: status.as_u16(), body: body.trim().to_owned() })
}

/// `POST url` with no body; succeeds on a 2xx answer.
pub async fn post(url: &str) -> Result<(), ApiError> {
    checked(url, client().post(url).send().await).await.map(drop)
}

/// `GET {base}/info`.
pub async fn get_info(base: &str) -> Result<Status, ApiError> {
    let url = format!("{}/info", base.trim_end_matches('/'));
    let response = checked(&url, client().get(&url).send().await).await?;
    response.json().await.map_err(|source| ApiError::Request { url, source })
}
