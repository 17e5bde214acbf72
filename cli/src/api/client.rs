//! Calling another node's API (the primary's `/handoff`, `replite status`'s `/info`,
//! `replite import`'s `/import` and `replite export`'s `/export`).

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::transfer::Imported;
use crate::driver::Status;

/// How long an API call may take: these are small requests to a node on the same network.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an import or export may go without receiving a byte. A transfer has no overall
/// limit (a database may be many GB), but the node answers an import only after checking and
/// copying the whole upload, and starts an export only after copying the database: minutes
/// for the largest databases, so a quarter of an hour of silence means the node is stuck.
const TRANSFER_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Bytes read from the file per upload chunk: large enough that per-chunk overhead vanishes,
/// small enough to keep memory flat whatever the file's size.
const UPLOAD_CHUNK_BYTES: usize = 64 * 1024;

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
    /// The URL cannot be built from the node's base URL.
    #[error("{url}: not a URL: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Writing what the node sent failed.
    #[error("{url}: writing the download: {source}")]
    Write {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: std::io::Error,
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

fn transfer_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(API_TIMEOUT)
        .read_timeout(TRANSFER_IDLE_TIMEOUT)
        .build()
        .unwrap_or_default()
}

/// `{base}/{path}?name={name}`, the name percent-encoded.
fn transfer_url(base: &str, path: &str, name: &str) -> Result<reqwest::Url, ApiError> {
    let url = format!("{}/{path}", base.trim_end_matches('/'));
    reqwest::Url::parse_with_params(&url, &[("name", name)])
        .map_err(|e| ApiError::BadUrl { url, reason: e.to_string() })
}

/// `POST {base}/import?name={name}` with the `len` bytes of `file` as the body, streamed;
/// `progress(sent, Some(len))` is called after each chunk. The node answers once the
/// database is replaced.
pub async fn import_database<R>(
    base: &str,
    name: &str,
    file: R,
    len: u64,
    mut progress: impl FnMut(u64, Option<u64>) + Send + 'static,
) -> Result<Imported, ApiError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let url = transfer_url(base, "import", name)?;
    // Ends at the file's end or first error; each step reads one chunk.
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0; UPLOAD_CHUNK_BYTES];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut sent: u64 = 0;
    let counted = futures_util::StreamExt::inspect(chunks, move |chunk| {
        if let Ok(bytes) = chunk {
            sent += bytes.len() as u64;
            progress(sent, Some(len));
        }
    });
    let request = transfer_client()
        .post(url.clone())
        .header(reqwest::header::CONTENT_LENGTH, len)
        .header(reqwest::header::CONTENT_TYPE, "application/vnd.sqlite3")
        .body(reqwest::Body::wrap_stream(counted));
    let url = url.to_string();
    let response = checked(&url, request.send().await).await?;
    response.json().await.map_err(|source| ApiError::Request { url, source })
}

/// `GET {base}/export?name={name}` into `out`, streamed; `progress(received, total)` is called
/// after each chunk (`total` when the node sent a length). The number of bytes written; `out`
/// is flushed, not synced.
pub async fn export_database<W>(
    base: &str,
    name: &str,
    out: &mut W,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<u64, ApiError>
where
    W: AsyncWrite + Unpin,
{
    let url = transfer_url(base, "export", name)?;
    let url_text = url.to_string();
    let mut response = checked(&url_text, transfer_client().get(url).send().await).await?;
    let total = response.content_length();
    let mut received: u64 = 0;
    // Ends with the response body, whose length the connection bounds.
    while let Some(chunk) =
        response.chunk().await.map_err(|source| ApiError::Request { url: url_text.clone(), source })?
    {
        out.write_all(&chunk).await.map_err(|source| ApiError::Write { url: url_text.clone(), source })?;
        received += chunk.len() as u64;
        progress(received, total);
    }
    out.flush().await.map_err(|source| ApiError::Write { url: url_text.clone(), source })?;
    Ok(received)
}
