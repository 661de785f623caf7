//! A real DNS server for tests: hickory-server on 127.0.0.1 (UDP and TCP,
//! same port) serving in-memory zones built from the records a test names.
//! Names under zones it does not serve get REFUSED (a temporary failure
//! for petrel); unknown names inside a served zone get NXDOMAIN.

use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, MX, NS, PTR, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};

/// One record of a test zone.
#[derive(Clone, Debug)]
pub enum Rec {
    /// `name MX preference exchange` (exchange "." is a null MX).
    Mx(&'static str, u16, &'static str),
    /// `name A address`.
    A(&'static str, Ipv4Addr),
    /// `name PTR target`.
    Ptr(&'static str, &'static str),
    /// `name TXT text`; text longer than 255 octets is split into
    /// several character-strings (as a zone file would), which readers
    /// join (RFC 7208 §3.3, RFC 6376 §3.6.2.2).
    Txt(String, String),
}

/// A running test DNS server; it lives until the test process ends.
pub struct TestDns {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
}

fn name(s: &str) -> Name {
    let fq = if s.ends_with('.') {
        s.to_string()
    } else {
        format!("{s}.")
    };
    Name::from_str(&fq).expect("name")
}

impl TestDns {
    /// Serves `zones` (origin, records) on a free loopback port.
    pub fn start(zones: Vec<(&'static str, Vec<Rec>)>) -> TestDns {
        TestDns::serve(None, zones).expect("dns server started")
    }

    /// Serves `zones` on `addr` exactly (e.g. port 53 for a tool that
    /// reads resolv.conf); `None` if it cannot be bound.
    pub fn start_at(addr: SocketAddr, zones: Vec<(&'static str, Vec<Rec>)>) -> Option<TestDns> {
        TestDns::serve(Some(addr), zones)
    }

    fn serve(at: Option<SocketAddr>, zones: Vec<(&'static str, Vec<Rec>)>) -> Option<TestDns> {
        let (tx, rx) = std::sync::mpsc::channel::<Option<SocketAddr>>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut catalog = Catalog::new();
                for (origin, records) in zones {
                    let origin_name = name(origin);
                    let mut zone = InMemoryZoneHandler::<
                        hickory_server::net::runtime::TokioRuntimeProvider,
                    >::empty(
                        origin_name.clone(), ZoneType::Primary, AxfrPolicy::Deny
                    );
                    let soa = SOA::new(
                        name(&format!("ns.{origin}")),
                        name(&format!("hostmaster.{origin}")),
                        1,
                        3600,
                        600,
                        86400,
                        60,
                    );
                    zone.upsert_mut(
                        Record::from_rdata(origin_name.clone(), 60, RData::SOA(soa)),
                        1,
                    );
                    zone.upsert_mut(
                        Record::from_rdata(
                            origin_name.clone(),
                            60,
                            RData::NS(NS(name(&format!("ns.{origin}")))),
                        ),
                        1,
                    );
                    for r in records {
                        let rec = match r {
                            Rec::Mx(n, pref, exch) => {
                                let ex = if exch == "." {
                                    Name::root()
                                } else {
                                    name(exch)
                                };
                                Record::from_rdata(name(n), 60, RData::MX(MX::new(pref, ex)))
                            }
                            Rec::A(n, ip) => Record::from_rdata(name(n), 60, RData::A(A(ip))),
                            Rec::Ptr(n, target) => {
                                Record::from_rdata(name(n), 60, RData::PTR(PTR(name(target))))
                            }
                            Rec::Txt(n, text) => {
                                let parts: Vec<String> = text
                                    .as_bytes()
                                    .chunks(255)
                                    .map(|c| String::from_utf8_lossy(c).into_owned())
                                    .collect();
                                Record::from_rdata(name(&n), 60, RData::TXT(TXT::new(parts)))
                            }
                        };
                        assert!(zone.upsert_mut(rec, 1), "record not added");
                    }
                    catalog.upsert(LowerName::from(origin_name), vec![Arc::new(zone)]);
                }
                let mut server = Server::new(catalog);
                // Bind UDP on a free port, then TCP on the same port.
                let (udp, tcp) = if let Some(at) = at {
                    match (
                        tokio::net::UdpSocket::bind(at).await,
                        tokio::net::TcpListener::bind(at).await,
                    ) {
                        (Ok(u), Ok(t)) => (u, t),
                        _ => {
                            let _ = tx.send(None);
                            return;
                        }
                    }
                } else {
                    loop {
                        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                            .await
                            .expect("udp");
                        let port = udp.local_addr().expect("addr").port();
                        if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                            break (udp, tcp);
                        }
                    }
                };
                let addr = udp.local_addr().expect("addr");
                server.register_socket(udp);
                server.register_listener(tcp, Duration::from_secs(5), 4096);
                tx.send(Some(addr)).expect("send addr");
                let _ = server.block_until_done().await;
            });
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("dns server thread answered")
            .map(|addr| TestDns { addr })
    }

    /// A server that answers every query with SERVFAIL (RFC 1035 rcode 2),
    /// over UDP and TCP.
    pub fn servfail() -> TestDns {
        TestDns::raw(true)
    }

    /// A server that reads every query and never answers (a look-up
    /// there times out).
    pub fn silent() -> TestDns {
        TestDns::raw(false)
    }

    fn raw(answer: bool) -> TestDns {
        let (udp, tcp) = loop {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
            let port = udp.local_addr().expect("addr").port();
            if let Ok(tcp) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().expect("addr");
        // The reply: the query with QR and RA set and rcode SERVFAIL.
        fn servfail(q: &[u8]) -> Option<Vec<u8>> {
            if q.len() < 12 {
                return None;
            }
            let mut r = q.to_vec();
            r[2] |= 0x80;
            r[3] = (r[3] & 0x70) | 0x80 | 2;
            Some(r)
        }
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                if answer && let Some(r) = servfail(&buf[..n]) {
                    let _ = udp.send_to(&r, from);
                }
            }
        });
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for conn in tcp.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let mut len = [0u8; 2];
                    while conn.read_exact(&mut len).is_ok() {
                        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                        if conn.read_exact(&mut q).is_err() {
                            return;
                        }
                        if answer && let Some(r) = servfail(&q) {
                            let _ = conn.write_all(&(r.len() as u16).to_be_bytes());
                            let _ = conn.write_all(&r);
                        }
                    }
                });
            }
        });
        TestDns { addr }
    }

    /// The zones every test gets: see `tests/common/mod.rs`.
    pub fn standard() -> TestDns {
        TestDns::start(vec![
            (
                "partner.test",
                vec![
                    Rec::Mx("partner.test", 10, "mx1.partner.test"),
                    Rec::Mx("partner.test", 20, "mx2.partner.test"),
                    Rec::A("mx1.partner.test", Ipv4Addr::new(127, 0, 0, 2)),
                    Rec::A("mx2.partner.test", Ipv4Addr::new(127, 0, 0, 3)),
                ],
            ),
            ("nullmx.test", vec![Rec::Mx("nullmx.test", 0, ".")]),
            (
                "nomx.test",
                vec![Rec::A("nomx.test", Ipv4Addr::new(127, 0, 0, 4))],
            ),
            ("gone.test", vec![]),
            (
                "tls.test",
                vec![
                    Rec::Mx("tls.test", 10, "mx.tls.test"),
                    Rec::A("mx.tls.test", Ipv4Addr::new(127, 0, 0, 5)),
                ],
            ),
            // 192.0.2.9 is bad.client.test both ways; 192.0.2.11 claims
            // liar.client.test, which does not point back. (Loopback
            // addresses cannot be used: hickory answers 127/8 reverse
            // look-ups itself, with "localhost".) Only looked up, never
            // connected to.
            (
                "2.0.192.in-addr.arpa",
                vec![
                    Rec::Ptr("9.2.0.192.in-addr.arpa", "bad.client.test"),
                    Rec::Ptr("11.2.0.192.in-addr.arpa", "liar.client.test"),
                ],
            ),
            (
                "client.test",
                vec![
                    Rec::A("bad.client.test", Ipv4Addr::new(192, 0, 2, 9)),
                    Rec::A("liar.client.test", Ipv4Addr::new(192, 0, 2, 12)),
                ],
            ),
            (
                "internet.test",
                vec![
                    Rec::Mx("internet.test", 10, "mx.internet.test"),
                    Rec::A("mx.internet.test", Ipv4Addr::new(127, 0, 0, 6)),
                ],
            ),
            // A blocklist that lists 127.0.0.77 (tests/explain.rs).
            (
                "bl.test",
                vec![Rec::A("77.0.0.127.bl.test", Ipv4Addr::new(127, 0, 0, 2))],
            ),
        ])
    }
}
