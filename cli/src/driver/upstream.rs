//! The stream to the primary: one task per `Output::Connect`, which opens the HTTP/2 stream
//! and turns what arrives into `Upstream*` inputs. The driver keeps the sending half for the
//! Node's acknowledgements.

use bytes::Bytes;
use replite_core::NodeId;
use replite_core::node::{Input, UpstreamId};
use replite_core::stream::Extensions;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::http::stream_client;

/// What an upstream task reports to the driver loop.
#[derive(Debug)]
pub enum UpstreamReport {
    /// The stream is open: acknowledgements go to `outgoing`.
    Opened {
        /// The stream.
        conn: UpstreamId,
        /// Extensions the primary agreed to.
        ext: Extensions,
        /// The request body's sending half.
        outgoing: mpsc::Sender<Bytes>,
    },
    /// Something for the Node.
    Input(Input),
}

/// Opens the stream to `url` and forwards everything it receives until it ends.
pub async fn run_upstream(
    conn: UpstreamId,
    url: String,
    me: NodeId,
    offered: Extensions,
    body: Vec<u8>,
    reports: mpsc::Sender<UpstreamReport>,
) {
    let mut up = match stream_client::connect(&url, me, offered, body).await {
        Ok(up) => up,
        Err(e) => {
            warn!(%url, error = %e, "connecting to the primary failed");
            let _ = reports.send(UpstreamReport::Input(Input::UpstreamClosed { conn })).await;
            return;
        }
    };
    let opened = UpstreamReport::Opened { conn, ext: up.ext, outgoing: up.outgoing.clone() };
    if reports.send(opened).await.is_err() {
        return;
    }
    while let Some(received) = up.incoming.recv().await {
        match received {
            Ok(bytes) => {
                let input = Input::UpstreamData { conn, bytes: bytes.to_vec() };
                if reports.send(UpstreamReport::Input(input)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!(%url, error = %e, "stream from the primary failed");
                break;
            }
        }
    }
    debug!(%url, "stream from the primary ended");
    let _ = reports.send(UpstreamReport::Input(Input::UpstreamClosed { conn })).await;
}
