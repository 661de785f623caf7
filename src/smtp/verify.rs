//! Recipient verification for relay domains (as Postfix's
//! `reject_unverified_recipient`): at RCPT, an edge gateway asks the
//! domain's next hop — the internal server, by the route for the domain —
//! whether it would take the address, with a probe session (EHLO, STARTTLS
//! as `smtp.outbound.tls` says, `MAIL FROM:<>`, `RCPT TO`, RSET, QUIT; never
//! DATA), and caches the answer. A 5xx answer becomes `550 5.1.1` at RCPT;
//! a next hop that cannot be reached or answers 4xx becomes `450 4.1.1`, so
//! the sender retries: nothing is accepted that would bounce later
//! (backscatter), and nothing is refused for a temporary failure.
//!
//! It owns the cache and the probe's dialogue plan; the dialogue itself is
//! `smtp::client::Client::probe_rcpt`. It never touches the queue.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Semaphore;

use super::client::{Client, ConnectError, ConnectOptions};
use super::reply::Reply;
use crate::config::Config;
use crate::delivery::dns::Dns;
use crate::router::{NextHopPlan, next_hop};

/// Cached answers kept at most; past it, expired ones are dropped, and if
/// that is not enough the cache starts over (a client inventing addresses
/// must not grow memory without bound).
const CACHE_LIMIT: usize = 100_000;
/// Probes in flight at once across all sessions; more wait (within the
/// probe timeout), so a flood of RCPTs does not become a flood of
/// connections to the internal server.
const MAX_PROBES: usize = 20;

/// What the next hop said about an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It takes mail for the address.
    Exists,
    /// It refused the address for good (its 5xx reply).
    Refused(String),
    /// No answer that tells (unreachable, 4xx, timeout): the reason.
    Unknown(String),
}

struct Entry {
    verdict: Verdict,
    until: Instant,
}

/// The verification cache and the probe limit, shared by all sessions.
pub struct Verifier {
    cache: Mutex<HashMap<String, Entry>>,
    probes: Semaphore,
    /// Addresses being probed now. A second RCPT for one of them while its
    /// probe runs is answered "unverified" (450) without a probe of its
    /// own: this ends a loop at once where the next hop is this server
    /// (its probe would probe again, and so on), and keeps a burst of RCPTs
    /// for one address to one probe.
    in_flight: Mutex<HashSet<String>>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            cache: Mutex::new(HashMap::new()),
            probes: Semaphore::new(MAX_PROBES),
            in_flight: Mutex::new(HashSet::new()),
        }
    }
}

/// An address's place in `in_flight`; removed on drop.
struct InFlight<'a> {
    set: &'a Mutex<HashSet<String>>,
    key: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl Verifier {
    /// The RCPT decision for `address`: `Ok` unless verification is on,
    /// the address is in a relay domain, and its next hop does not take
    /// it. Called after the rest of the RCPT policy accepted the address.
    pub async fn rcpt(&self, cfg: &Config, dns: &Dns, address: &str) -> Result<(), Reply> {
        if !cfg.inbound.verify_relay_recipients {
            return Ok(());
        }
        let Some((_, domain)) = address.rsplit_once('@') else {
            return Ok(());
        };
        if !cfg.domains.is_relay(domain) {
            return Ok(());
        }
        let (verdict, cached) = self.verdict(cfg, dns, address).await;
        if cached {
            tracing::debug!(to = %address, cached, verdict = ?verdict, "recipient verification");
        } else {
            tracing::info!(to = %address, cached, verdict = ?verdict, "recipient verification");
        }
        match verdict {
            Verdict::Exists => Ok(()),
            Verdict::Refused(said) => Err(Reply::new(
                550,
                "5.1.1",
                format!("<{address}>: Recipient address rejected: undeliverable address: {said}"),
            )),
            Verdict::Unknown(why) => Err(Reply::new(
                450,
                "4.1.1",
                format!("<{address}>: Recipient address rejected: unverified address: {why}"),
            )),
        }
    }

    /// The cached verdict, or a new probe's. The bool: from the cache.
    async fn verdict(&self, cfg: &Config, dns: &Dns, address: &str) -> (Verdict, bool) {
        let key = address.to_lowercase();
        let now = Instant::now();
        if let Some(e) = self.lock().get(&key)
            && e.until > now
        {
            return (e.verdict.clone(), true);
        }
        let _in_flight = {
            let mut set = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if !set.insert(key.clone()) {
                return (
                    Verdict::Unknown(
                        "a verification of this address is under way (or loops back here)".into(),
                    ),
                    false,
                );
            }
            InFlight {
                set: &self.in_flight,
                key: key.clone(),
            }
        };
        let timeout = cfg.inbound.verify_timeout;
        let verdict = match tokio::time::timeout(timeout, self.probe(cfg, dns, address)).await {
            Ok(v) => v,
            Err(_) => Verdict::Unknown(format!("the next hop did not answer within {timeout:?}")),
        };
        let ttl = match verdict {
            Verdict::Exists => Some(cfg.inbound.verify_positive_ttl),
            Verdict::Refused(_) => Some(cfg.inbound.verify_negative_ttl),
            // A temporary failure is asked again next time.
            Verdict::Unknown(_) => None,
        };
        if let Some(ttl) = ttl {
            let mut cache = self.lock();
            if cache.len() >= CACHE_LIMIT {
                cache.retain(|_, e| e.until > now);
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
            }
            cache.insert(
                key,
                Entry {
                    verdict: verdict.clone(),
                    until: Instant::now() + ttl,
                },
            );
        }
        (verdict, false)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One probe session to the first host of the next hop that answers.
    async fn probe(&self, cfg: &Config, dns: &Dns, address: &str) -> Verdict {
        let Ok(_permit) = self.probes.acquire().await else {
            return Verdict::Unknown("verification is shutting down".into());
        };
        let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let hosts = match hosts(cfg, dns, domain).await {
            Ok(h) => h,
            Err(why) => return Verdict::Unknown(why),
        };
        // Probes leave from the same source address as deliveries.
        let opts = ConnectOptions::new(cfg, Default::default());
        let mut last = format!("no host for {domain}");
        for (name, addr) in hosts {
            let mut client = match Client::connect(addr, &name, &opts).await {
                Ok(c) => c,
                Err(ConnectError::NextHost(e) | ConnectError::Policy(e)) => {
                    last = e;
                    continue;
                }
            };
            let said = client.probe_rcpt(address).await;
            let peer = client.peer.clone();
            tokio::spawn(async move {
                let _ = client.quit().await;
            });
            return match said {
                Ok(r) if (200..300).contains(&r.code) => Verdict::Exists,
                Ok(r) if r.code >= 500 => {
                    Verdict::Refused(format!("host {peer} said: {}", r.line()))
                }
                Ok(r) => Verdict::Unknown(format!("host {peer} said: {}", r.line())),
                Err(e) => Verdict::Unknown(e),
            };
        }
        Verdict::Unknown(last)
    }
}

/// The hosts to ask for `domain`, in order, as delivery would reach them.
async fn hosts(cfg: &Config, dns: &Dns, domain: &str) -> Result<Vec<(String, SocketAddr)>, String> {
    let (name, port, mx) = match next_hop(cfg, domain) {
        NextHopPlan::Host(h) => (h.host, h.port, !h.no_mx),
        NextHopPlan::Mx(d) => (d, cfg.outbound.port, true),
        NextHopPlan::Literal(ip) => {
            return Ok(vec![(
                ip.to_string(),
                SocketAddr::new(ip, cfg.outbound.port),
            )]);
        }
    };
    let names = if mx {
        dns.mail_hosts(&name)
            .await
            .map_err(|e| e.reason())?
            .into_iter()
            .map(|h| h.name)
            .collect()
    } else {
        vec![name]
    };
    let mut out = Vec::new();
    let mut last = None;
    for n in names {
        match dns.addresses(&n).await {
            Ok(ips) => out.extend(
                ips.into_iter()
                    .map(|ip| (n.clone(), SocketAddr::new(ip, port))),
            ),
            Err(e) => last = Some(e.reason()),
        }
    }
    if out.is_empty() {
        return Err(last.unwrap_or_else(|| format!("no address for {domain}")));
    }
    Ok(out)
}
