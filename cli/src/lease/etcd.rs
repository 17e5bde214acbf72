//! etcd v3 leases: a TTL lease per term, the election a transaction that creates the key only
//! if it does not exist, and the key's modify revision as the term's epoch. A handoff target
//! rewrites the key under its own lease only if it is still the handed term, so the key is
//! never free in between. etcd revisions only grow, so a later term always has a larger epoch.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
};
use replite_core::Epoch;
use tracing::{debug, info};

use crate::config::EtcdConfig;
use crate::lease::{AcquireOutcome, LeaseError, LeaseRecord};

/// How long one request to etcd may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// One held term: the etcd lease behind it and its keep-alive channel.
struct Term {
    lease_id: i64,
    keeper: LeaseKeeper,
    responses: LeaseKeepAliveStream,
}

/// A lease backend on an etcd v3 cluster.
pub struct EtcdLeaser {
    client: Client,
    key: String,
    ttl: Duration,
    me: LeaseRecord,
    terms: BTreeMap<Epoch, Term>,
}

fn store_error(op: &'static str) -> impl FnOnce(etcd_client::Error) -> LeaseError {
    move |e| LeaseError::Store { op, message: e.to_string() }
}

impl EtcdLeaser {
    /// Connects to the cluster in `config`; `me` is what this node writes under the key.
    pub async fn connect(config: &EtcdConfig, me: LeaseRecord) -> Result<EtcdLeaser, LeaseError> {
        let mut options = ConnectOptions::new().with_connect_timeout(REQUEST_TIMEOUT).with_timeout(REQUEST_TIMEOUT);
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            options = options.with_user(user.clone(), password.clone());
        }
        let client = Client::connect(&config.endpoints, Some(options)).await.map_err(store_error("connect"))?;
        Ok(EtcdLeaser { client, key: config.key.clone(), ttl: config.ttl, me, terms: BTreeMap::new() })
    }

    /// Tries to become primary: grants a lease and creates the key under it unless it exists.
    pub async fn acquire(&mut self) -> Result<AcquireOutcome, LeaseError> {
        match self.elect(Compare::create_revision(self.key.as_str(), CompareOp::Equal, 0)).await? {
            Some(outcome) => Ok(outcome),
            // The holder let go between the compare and the get: report a failed attempt and
            // let the node try again.
            None => Err(LeaseError::Store { op: "acquire", message: "key vanished during the election".into() }),
        }
    }

    /// Takes over the term `from` its holder handed us: rewrites the key under a lease of ours
    /// only while it is still that term. A key that has meanwhile expired is acquired anew.
    pub async fn take_over(&mut self, from: Epoch) -> Result<AcquireOutcome, LeaseError> {
        let revision = i64::try_from(from.0).unwrap_or(i64::MAX);
        match self.elect(Compare::mod_revision(self.key.as_str(), CompareOp::Equal, revision)).await? {
            Some(outcome) => Ok(outcome),
            None => self.acquire().await,
        }
    }

    /// Puts our record under a fresh lease if `condition` holds. `None` when it did not hold
    /// and the key does not exist.
    async fn elect(&mut self, condition: Compare) -> Result<Option<AcquireOutcome>, LeaseError> {
        let ttl_secs = i64::try_from(self.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let grant = self.client.lease_grant(ttl_secs, None).await.map_err(store_error("grant"))?;
        let lease_id = grant.id();
        let granted_ttl = Duration::from_secs(u64::try_from(grant.ttl()).unwrap_or(0));

        let txn = Txn::new()
            .when([condition])
            .and_then([TxnOp::put(self.key.as_str(), self.me.to_json(), Some(PutOptions::new().with_lease(lease_id)))])
            .or_else([TxnOp::get(self.key.as_str(), None)]);
        let result = self.client.txn(txn).await;
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                // Best effort: an orphaned lease expires by itself after its TTL anyway.
                let _ = self.client.lease_revoke(lease_id).await;
                return Err(store_error("acquire")(e));
            }
        };

        if response.succeeded() {
            let revision = response.header().map(|h| h.revision()).unwrap_or(0);
            let epoch = Epoch(u64::try_from(revision).unwrap_or(0));
            let (keeper, responses) =
                self.client.lease_keep_alive(lease_id).await.map_err(store_error("keep-alive"))?;
            self.terms.insert(epoch, Term { lease_id, keeper, responses });
            info!(key = %self.key, %epoch, lease_id, "acquired etcd lease");
            return Ok(Some(AcquireOutcome::Acquired { epoch, ttl: granted_ttl, lease_id: format!("{lease_id:x}") }));
        }

        let _ = self.client.lease_revoke(lease_id).await;
        let held = response.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        match held {
            Some(kv) => {
                let holder = LeaseRecord::from_json(kv.value())
                    .map_err(|e| LeaseError::BadRecord { key: self.key.clone(), message: e.to_string() })?;
                let epoch = Epoch(u64::try_from(kv.mod_revision()).unwrap_or(0));
                debug!(key = %self.key, %epoch, holder = %holder.hostname, "etcd lease held by another node");
                Ok(Some(AcquireOutcome::Held { holder, epoch }))
            }
            None => Ok(None),
        }
    }

    /// Extends the term's lease by its TTL. `Ok(false)` means the lease is gone (expired or
    /// revoked): the term is over.
    pub async fn renew(&mut self, epoch: Epoch) -> Result<bool, LeaseError> {
        let term = self.terms.get_mut(&epoch).ok_or(LeaseError::NotHeld { epoch })?;
        term.keeper.keep_alive().await.map_err(store_error("renew"))?;
        let reply = term.responses.message().await.map_err(store_error("renew"))?;
        let alive = reply.is_some_and(|r| r.ttl() > 0);
        if !alive {
            info!(key = %self.key, %epoch, "etcd lease expired");
            self.terms.remove(&epoch);
        }
        Ok(alive)
    }

    /// Stops renewing the term without revoking its lease: a handoff target takes the key
    /// over (see [`EtcdLeaser::take_over`]); if it does not, the lease expires by itself.
    pub fn hand_over(&mut self, epoch: Epoch) -> Result<(), LeaseError> {
        self.terms.remove(&epoch).ok_or(LeaseError::NotHeld { epoch })?;
        info!(key = %self.key, %epoch, "handed the etcd lease over");
        Ok(())
    }

    /// Gives the lease up at once (clean shutdown): the key is deleted with it.
    pub async fn release(&mut self, epoch: Epoch) -> Result<(), LeaseError> {
        let term = self.terms.remove(&epoch).ok_or(LeaseError::NotHeld { epoch })?;
        self.client.lease_revoke(term.lease_id).await.map_err(store_error("release"))?;
        info!(key = %self.key, %epoch, "released etcd lease");
        Ok(())
    }

    /// Who holds the lease now, if anyone.
    pub async fn observe(&mut self) -> Result<Option<(LeaseRecord, Epoch)>, LeaseError> {
        let response = self.client.get(self.key.as_str(), None).await.map_err(store_error("observe"))?;
        let Some(kv) = response.kvs().first() else { return Ok(None) };
        let holder = LeaseRecord::from_json(kv.value())
            .map_err(|e| LeaseError::BadRecord { key: self.key.clone(), message: e.to_string() })?;
        Ok(Some((holder, Epoch(u64::try_from(kv.mod_revision()).unwrap_or(0)))))
    }

    /// The configured TTL.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}
