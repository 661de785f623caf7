//! `petrel explain --client IP [--helo NAME] [--from ADDR] --to ADDR
//! [--listener NAME] [--auth USER] [--json]`: a would-be session through
//! every rule in the order a real session meets them, sending nothing.
//! The decisions are `smtp::policy`'s, the same functions the session
//! calls; each line names the key that decided; the last is the reply a
//! real session would get.

use std::io::Write;
use std::net::IpAddr;

use serde::Serialize;

use crate::config::{AuthMode, Config, OutboundTls, Protocol};
use crate::router::{self, Destination, NextHopPlan};
use crate::smtp::policy::{self, Decision, MailParams, Refusal};

/// The command's arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The client's address.
    #[arg(long)]
    client: IpAddr,
    /// The client's verified host name (for host-name patterns); explain
    /// does not look it up.
    #[arg(long)]
    client_name: Option<String>,
    /// The EHLO name.
    #[arg(long, default_value = "client.invalid")]
    helo: String,
    /// The envelope sender (default `<>`).
    #[arg(long, default_value = "")]
    from: String,
    /// A recipient (repeatable).
    #[arg(long, required = true)]
    to: Vec<String>,
    /// The listener (default: the first SMTP listener).
    #[arg(long)]
    listener: Option<String>,
    /// As if the client had authenticated as this user.
    #[arg(long)]
    auth: Option<String>,
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

/// One line of the explanation.
#[derive(Debug, Serialize)]
struct Step {
    stage: String,
    /// `pass`, `reject`, `info`.
    verdict: &'static str,
    key: String,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply: Option<String>,
}

#[derive(Debug, Serialize)]
struct Explanation {
    /// `accept` or `reject`.
    verdict: &'static str,
    /// The code of the reply the session would end on.
    code: u16,
    /// That reply.
    reply: String,
    steps: Vec<Step>,
}

fn pass(stage: &str, d: Decision) -> Step {
    Step {
        stage: stage.into(),
        verdict: "pass",
        key: d.key,
        detail: d.detail,
        reply: None,
    }
}

fn info(stage: &str, key: &str, detail: String) -> Step {
    Step {
        stage: stage.into(),
        verdict: "info",
        key: key.into(),
        detail,
        reply: None,
    }
}

fn reject(stage: &str, r: Refusal) -> (Step, u16, String) {
    let text = r.reply.to_wire().trim_end().to_string();
    (
        Step {
            stage: stage.into(),
            verdict: "reject",
            key: r.key,
            detail: r.detail,
            reply: Some(text.clone()),
        },
        r.reply.code,
        text,
    )
}

/// Runs `petrel explain`.
pub fn run(config: &Config, args: &Args) -> Result<(), String> {
    let e = explain(config, args)?;
    let mut out = std::io::stdout().lock();
    let r = if args.json {
        writeln!(out, "{}", serde_json::json!(e))
    } else {
        (|| {
            for s in &e.steps {
                writeln!(
                    out,
                    "{:<8} {:<6} {:<44} {}",
                    s.stage, s.verdict, s.key, s.detail
                )?;
            }
            writeln!(out, "reply    {}", e.reply)
        })()
    };
    r.map_err(|e| e.to_string())
}

fn explain(config: &Config, args: &Args) -> Result<Explanation, String> {
    let listener = match &args.listener {
        Some(n) => config
            .listeners
            .iter()
            .find(|l| &l.name == n)
            .ok_or_else(|| format!("no listener named {n:?}"))?,
        None => config
            .listeners
            .iter()
            .find(|l| l.protocol != Protocol::Pop3)
            .ok_or("no SMTP listener")?,
    };
    // The console's deny list, as the daemon would read it now.
    let deny = crate::policy::denylist::DenyList::load(&config.server.spool)?;
    let mut steps = Vec::new();
    let ip = crate::config::canonical_ip(args.client);
    let name = args.client_name.as_deref();
    let done = |steps, verdict, code, reply| Explanation {
        verdict,
        code,
        reply,
        steps,
    };
    steps.push(info(
        "connect",
        &format!("listeners[{}]", listener.name),
        format!("{} on {} ({:?})", ip, listener.bind, listener.protocol),
    ));
    match policy::connection(config, &deny, ip, name) {
        Ok(d) => steps.push(pass("connect", d)),
        Err(r) => {
            let (s, code, text) = reject("connect", r);
            steps.push(s);
            return Ok(done(steps, "reject", code, text));
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let dns = crate::delivery::dns::Dns::new(&config.dns.nameservers)?;
    // Rate limits and DNS lists apply to clients that may not relay, as in
    // a session (an authenticated client is not known at connect).
    if policy::relay_client(config, ip, name, None).is_none() {
        let r = &config.inbound.rate_limits;
        steps.push(info(
            "connect",
            "smtp.inbound.rate_limits",
            if r.connections_per_minute + r.messages_per_minute + r.recipients_per_minute == 0 {
                "no rate limits".to_string()
            } else {
                format!(
                    "per client and minute: {} connections, {} messages, {} recipients \
                     (0: none); counted by the running daemon, not here",
                    r.connections_per_minute, r.messages_per_minute, r.recipients_per_minute
                )
            },
        ));
        let mut trace = Vec::new();
        let refusal = runtime.block_on(crate::policy::dnsbl::dns_checks(
            &dns.resolver(),
            config,
            ip,
            Some(&mut trace),
        ));
        // With a refusal, the last check is the one that decided.
        let decided = refusal.as_ref().and_then(|_| trace.pop());
        for f in trace {
            steps.push(info("connect", f.key, f.detail));
        }
        if let (Some(reply), Some(f)) = (refusal, decided) {
            let (s, code, text) = reject(
                "connect",
                Refusal {
                    key: f.key.to_string(),
                    detail: f.detail,
                    reply,
                },
            );
            steps.push(s);
            return Ok(done(steps, "reject", code, text));
        }
    }
    steps.push(info(
        "helo",
        "-",
        format!("EHLO {}: no HELO checks", args.helo),
    ));
    if let Some(user) = &args.auth {
        if listener.auth == AuthMode::Off {
            return Err(format!("listener {} offers no AUTH", listener.name));
        }
        if config.directory.user(user).is_none() {
            return Err(format!("{user} is not a user"));
        }
        steps.push(info(
            "auth",
            &format!("listeners[{}].auth", listener.name),
            format!("assumed: authenticated as {user}"),
        ));
    }
    let params = MailParams {
        esmtp: true,
        ..Default::default()
    };
    match policy::mail(
        config,
        &deny,
        listener,
        args.auth.as_deref(),
        &args.from,
        params,
    ) {
        Ok(d) => steps.push(pass("mail", d)),
        Err(r) => {
            let (s, code, text) = reject("mail", r);
            steps.push(s);
            return Ok(done(steps, "reject", code, text));
        }
    }
    let relay = policy::relay_client(config, ip, name, args.auth.as_deref());
    steps.push(match &relay {
        Some(d) => info("relay", &d.key, format!("may relay: {}", d.detail)),
        None => info(
            "relay",
            "smtp.inbound.relay_from",
            format!("{ip} may not relay (no entry, not authenticated)"),
        ),
    });
    let mut last = (250u16, "250 2.1.5 Ok".to_string());
    let mut any = false;
    for to in &args.to {
        let address = if to.eq_ignore_ascii_case("postmaster") {
            format!("postmaster@{}", config.domains.primary)
        } else {
            to.trim_matches(|c| c == '<' || c == '>').to_string()
        };
        if config.inbound.max_recipients == 0 {
            return Err("smtp.inbound.max_recipients is 0".into());
        }
        match policy::rcpt(config, &address, relay.as_ref()) {
            Err(r) => {
                let (s, code, text) = reject("rcpt", r);
                steps.push(s);
                last = (code, text);
                continue;
            }
            Ok(d) => steps.push(pass("rcpt", d)),
        }
        let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        if config.inbound.verify_relay_recipients
            && config.domains.is_relay(domain)
            && !config.domains.is_local(domain)
        {
            steps.push(info(
                "verify",
                "smtp.inbound.verify_relay_recipients",
                format!("would probe the next hop of {domain} for <{address}> (RCPT without DATA)"),
            ));
        }
        any = true;
        last = (250, "250 2.1.5 Ok".into());
        let expanded = crate::intake::expand_recipients(
            config,
            &[crate::intake::EnvelopeRcpt::plain(&address)],
        );
        for r in expanded {
            route_steps(config, &runtime, &dns, &r.address, &mut steps);
        }
    }
    let _ = any;
    let verdict = if last.0 < 400 { "accept" } else { "reject" };
    Ok(done(steps, verdict, last.0, last.1))
}

fn route_steps(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
    dns: &crate::delivery::dns::Dns,
    address: &str,
    steps: &mut Vec<Step>,
) {
    match router::route(config, address) {
        Destination::Mailbox(m) => steps.push(info(
            "route",
            "users / mailin",
            format!("<{address}>: mailbox {m}"),
        )),
        Destination::Unknown => steps.push(info(
            "route",
            "users / aliases / mailin",
            format!("<{address}>: no mailbox: delivery would bounce it (5.1.1)"),
        )),
        Destination::Remote(domain) => {
            let plan = router::next_hop(config, &domain);
            let route_index =
                config
                    .outbound
                    .routes
                    .iter()
                    .position(|r| match r.domain.strip_prefix("*.") {
                        Some(s) => domain.ends_with(&format!(".{s}")),
                        None => r.domain == domain,
                    });
            let key = match (&plan, route_index) {
                (NextHopPlan::Host(_), Some(i)) => format!("smtp.outbound.routes[{i}]"),
                (NextHopPlan::Host(_), None) => "smtp.outbound.smarthost".into(),
                _ => "dns.nameservers".into(),
            };
            let detail = match &plan {
                NextHopPlan::Mx(d) => {
                    let hosts = runtime.block_on(dns.mail_hosts(d));
                    match hosts {
                        Ok(hosts) => {
                            let list: Vec<String> = hosts
                                .iter()
                                .map(|h| {
                                    let addrs = runtime
                                        .block_on(dns.addresses(&h.name))
                                        .map(|a| {
                                            a.iter()
                                                .map(ToString::to_string)
                                                .collect::<Vec<_>>()
                                                .join(" ")
                                        })
                                        .unwrap_or_else(|e| e.reason());
                                    format!("{} {} ({addrs})", h.preference, h.name)
                                })
                                .collect();
                            format!(
                                "<{address}>: MX of {d}: {} port {}",
                                list.join(", "),
                                config.outbound.port
                            )
                        }
                        Err(e) => format!("<{address}>: MX of {d}: {}", e.reason()),
                    }
                }
                other => format!("<{address}>: next hop {}", other.key()),
            };
            steps.push(info("route", &key, detail));
            let tls = match config.outbound.tls {
                OutboundTls::Off => "never STARTTLS",
                OutboundTls::Opportunistic => "STARTTLS where offered, unverified",
                OutboundTls::Required => "verified TLS or defer",
            };
            steps.push(info("tls", "smtp.outbound.tls", tls.to_string()));
        }
    }
}
