//! Consul leases, compatible with LiteFS's: a session with TTL, lock delay and the "delete"
//! behaviour, the key acquired with that session, the value `{"hostname", "advertise-url"}`.
//! A replite node can therefore take part in a LiteFS cluster's election. The epoch is the
//! key's modify index, which Consul only ever increases.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use replite_core::Epoch;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use crate::config::ConsulConfig;
use crate::lease::{AcquireOutcome, LeaseError, LeaseRecord};

/// Session name LiteFS uses, kept so operators see the same thing in Consul's UI.
const SESSION_NAME: &str = "litefs";
/// How long one request to Consul may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A lease backend on Consul's HTTP API.
pub struct ConsulLeaser {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
    key: String,
    node_name: Option<String>,
    ttl: Duration,
    lock_delay: Duration,
    me: LeaseRecord,
    sessions: BTreeMap<Epoch, String>,
}

#[derive(Deserialize)]
struct SessionCreated {
    #[serde(rename = "ID")]
    id: String,
}

#[derive(Deserialize)]
struct KvEntry {
    #[serde(rename = "Value")]
    value: Option<String>,
    #[serde(rename = "Session")]
    session: Option<String>,
    #[serde(rename = "ModifyIndex")]
    modify_index: u64,
}

fn go_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

fn request_error(op: &'static str) -> impl FnOnce(reqwest::Error) -> LeaseError {
    move |e| LeaseError::Store { op, message: e.to_string() }
}

impl ConsulLeaser {
    /// Prepares a client for `config.url`. As in LiteFS, the URL's password is the ACL token
    /// and its path a key prefix (which also names a catalog node the sessions attach to).
    pub async fn connect(config: &ConsulConfig, me: LeaseRecord) -> Result<ConsulLeaser, LeaseError> {
        let bad = |message: String| LeaseError::Store { op: "connect", message };
        let mut base = Url::parse(&config.url).map_err(|e| bad(format!("invalid consul url {:?}: {e}", config.url)))?;
        let token = base.password().map(str::to_string);
        let prefix = base.path().trim_matches('/').to_string();
        base.set_path("/");
        let _ = base.set_password(None);
        let _ = base.set_username("");
        let key = if prefix.is_empty() { config.key.clone() } else { format!("{prefix}/{}", config.key) };
        let node_name = (!prefix.is_empty()).then(|| format!("{prefix}/litefs"));
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().map_err(|e| bad(e.to_string()))?;
        let leaser = ConsulLeaser {
            http,
            base,
            token,
            key,
            node_name,
            ttl: config.ttl,
            lock_delay: config.lock_delay,
            me,
            sessions: BTreeMap::new(),
        };
        if let Some(node) = &leaser.node_name {
            let body = json!({ "Node": node, "Address": "localhost" });
            leaser
                .send(Method::PUT, "v1/catalog/register", &[], Some(body.to_string().into_bytes()), "register")
                .await?;
        }
        Ok(leaser)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
        op: &'static str,
    ) -> Result<(StatusCode, Vec<u8>), LeaseError> {
        let mut url = self.base.join(path).map_err(|e| LeaseError::Store { op, message: e.to_string() })?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(request_error(op))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(request_error(op))?.to_vec();
        if !status.is_success() && status != StatusCode::NOT_FOUND {
            let message = format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes).trim());
            return Err(LeaseError::Store { op, message });
        }
        Ok((status, bytes))
    }

    fn kv_path(&self) -> String {
        format!("v1/kv/{}", self.key)
    }

    async fn read_key(&self, op: &'static str) -> Result<Option<KvEntry>, LeaseError> {
        let (status, body) = self.send(Method::GET, &self.kv_path(), &[], None, op).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let mut entries: Vec<KvEntry> = serde_json::from_slice(&body)
            .map_err(|e| LeaseError::Store { op, message: format!("bad KV reply: {e}") })?;
        Ok(entries.pop())
    }

    fn decode_record(&self, entry: &KvEntry) -> Result<LeaseRecord, LeaseError> {
        let bad = |message: String| LeaseError::BadRecord { key: self.key.clone(), message };
        let encoded = entry.value.as_deref().unwrap_or("");
        let raw = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|e| bad(e.to_string()))?;
        LeaseRecord::from_json(&raw).map_err(|e| bad(e.to_string()))
    }

    /// Tries to become primary: creates a session and acquires the key with it.
    pub async fn acquire(&mut self) -> Result<AcquireOutcome, LeaseError> {
        let mut session = json!({
            "Name": SESSION_NAME,
            "Behavior": "delete",
            "LockDelay": go_duration(self.lock_delay),
            "TTL": go_duration(self.ttl),
            "NodeChecks": [],
            "Checks": [],
        });
        if let Some(node) = &self.node_name {
            session["Node"] = json!(node);
        }
        let (_, body) =
            self.send(Method::PUT, "v1/session/create", &[], Some(session.to_string().into_bytes()), "session").await?;
        let SessionCreated { id } = serde_json::from_slice(&body)
            .map_err(|e| LeaseError::Store { op: "session", message: format!("bad session reply: {e}") })?;

        let acquired = self
            .send(Method::PUT, &self.kv_path(), &[("acquire", id.as_str())], Some(self.me.to_json()), "acquire")
            .await
            .map(|(_, body)| body.trim_ascii() == b"true");
        if let Ok(true) = acquired
            && let Some(entry) = self.read_key("acquire").await?
            && entry.session.as_deref() == Some(id.as_str())
        {
            let epoch = Epoch(entry.modify_index);
            info!(key = %self.key, %epoch, session = %id, "acquired consul lease");
            self.sessions.insert(epoch, id.clone());
            return Ok(AcquireOutcome::Acquired { epoch, ttl: self.ttl, lease_id: id });
        }

        // Lost the election (or the request failed): the session is of no further use.
        let _ = self.send(Method::PUT, &format!("v1/session/destroy/{id}"), &[], None, "destroy").await;
        acquired?;
        match self.read_key("acquire").await? {
            Some(entry) if entry.session.is_some() => {
                Ok(AcquireOutcome::Held { holder: self.decode_record(&entry)?, epoch: Epoch(entry.modify_index) })
            }
            // Unlocked but not acquirable: the lock delay after a lost session.
            _ => Err(LeaseError::Store { op: "acquire", message: "key is in its lock delay".into() }),
        }
    }

    /// Renews the term's session. `Ok(false)` means it is gone: the term is over.
    pub async fn renew(&mut self, epoch: Epoch) -> Result<bool, LeaseError> {
        let id = self.sessions.get(&epoch).ok_or(LeaseError::NotHeld { epoch })?.clone();
        let (status, _) = self.send(Method::PUT, &format!("v1/session/renew/{id}"), &[], None, "renew").await?;
        if status == StatusCode::NOT_FOUND {
            info!(key = %self.key, %epoch, "consul session expired");
            self.sessions.remove(&epoch);
            return Ok(false);
        }
        Ok(true)
    }

    /// Takes over the term `from` its holder handed us, as a LiteFS handoff target does: renews
    /// the holder's session and rewrites the key with our record under it, so the key is
    /// never unlocked in between (an unlocked key would also sit out its lock delay). A key
    /// no longer in that term is held by someone else, or free and acquired anew.
    pub async fn take_over(&mut self, from: Epoch) -> Result<AcquireOutcome, LeaseError> {
        let handed = match self.read_key("take over").await? {
            Some(entry) if entry.modify_index == from.0 => entry.session,
            Some(entry) if entry.session.is_some() => {
                return Ok(AcquireOutcome::Held {
                    holder: self.decode_record(&entry)?,
                    epoch: Epoch(entry.modify_index),
                });
            }
            _ => None,
        };
        let Some(id) = handed else { return self.acquire().await };
        let (status, _) = self.send(Method::PUT, &format!("v1/session/renew/{id}"), &[], None, "take over").await?;
        if status == StatusCode::NOT_FOUND {
            // The handed session expired first: the key is gone with it.
            return self.acquire().await;
        }
        let (_, body) = self
            .send(Method::PUT, &self.kv_path(), &[("acquire", id.as_str())], Some(self.me.to_json()), "take over")
            .await?;
        match self.read_key("take over").await? {
            Some(entry) if body.trim_ascii() == b"true" && entry.session.as_deref() == Some(id.as_str()) => {
                let epoch = Epoch(entry.modify_index);
                info!(key = %self.key, %epoch, session = %id, "took the consul lease over");
                self.sessions.insert(epoch, id.clone());
                Ok(AcquireOutcome::Acquired { epoch, ttl: self.ttl, lease_id: id })
            }
            Some(entry) if entry.session.is_some() => {
                Ok(AcquireOutcome::Held { holder: self.decode_record(&entry)?, epoch: Epoch(entry.modify_index) })
            }
            _ => Err(LeaseError::Store { op: "take over", message: "the handed session lost the key".into() }),
        }
    }

    /// Stops renewing the term's session without destroying it: a handoff target takes it
    /// over (see [`ConsulLeaser::take_over`]); if it does not, the session expires.
    pub fn hand_over(&mut self, epoch: Epoch) -> Result<(), LeaseError> {
        self.sessions.remove(&epoch).ok_or(LeaseError::NotHeld { epoch })?;
        info!(key = %self.key, %epoch, "handed the consul lease over");
        Ok(())
    }

    /// Releases the key and destroys the session (clean shutdown).
    pub async fn release(&mut self, epoch: Epoch) -> Result<(), LeaseError> {
        let id = self.sessions.remove(&epoch).ok_or(LeaseError::NotHeld { epoch })?;
        self.send(Method::PUT, &self.kv_path(), &[("release", id.as_str())], None, "release").await?;
        self.send(Method::PUT, &format!("v1/session/destroy/{id}"), &[], None, "release").await?;
        info!(key = %self.key, %epoch, "released consul lease");
        Ok(())
    }

    /// Who holds the lease now, if anyone.
    pub async fn observe(&mut self) -> Result<Option<(LeaseRecord, Epoch)>, LeaseError> {
        match self.read_key("observe").await? {
            Some(entry) if entry.session.is_some() => {
                Ok(Some((self.decode_record(&entry)?, Epoch(entry.modify_index))))
            }
            _ => Ok(None),
        }
    }
}
