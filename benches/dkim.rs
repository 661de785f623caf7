//! DKIM cost per message: signing a 4 KiB message with Ed25519 (RFC 8463)
//! and RSA-2048 as intake does (`policy::dkim_sign::sign_chunks`), and
//! verifying it as the inbound checks do (mail-auth's verifier; the public
//! key comes from a pre-filled TXT cache, so no DNS is timed).
//!
//! Run: `cargo bench --bench dkim` (figures in docs/benchmarks.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mail_auth::common::parse::TxtRecordParser as _;
use mail_auth::common::verify::DomainKey;
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};
use petrel::policy::dkim_sign::sign_chunks;
use petrel::policy::keys::{self, Algorithm, LoadedKey};

/// A TXT cache filled by the benchmark.
#[derive(Default)]
struct Cache(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for Cache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.lock().expect("lock").get(name).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.lock().expect("lock").remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, _: std::time::Instant) {
        self.0.lock().expect("lock").insert(key, value);
    }
}

fn message() -> Vec<u8> {
    let mut m = b"From: Alice <alice@example.test>\r\nTo: dave@partner.test\r\nSubject: bench\r\nDate: Wed, 02 Dec 2026 12:00:00 +0000\r\nMessage-ID: <bench@example.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n".to_vec();
    while m.len() < 4096 {
        m.extend_from_slice(
            b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwx\r\n",
        );
    }
    m
}

fn dkim(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let auth = MessageAuthenticator::new(
        hickory_resolver::config::ResolverConfig::from_parts(None, vec![], vec![]),
        Default::default(),
    )
    .expect("resolver");
    let msg = message();
    let mut group = c.benchmark_group("dkim_4KiB");
    group.throughput(Throughput::Elements(1));
    for (alg, name) in [
        (Algorithm::Ed25519, "ed25519"),
        (Algorithm::Rsa2048, "rsa2048"),
    ] {
        let new = keys::generate(alg).expect("key");
        let key = LoadedKey {
            domain: "example.test".into(),
            selector: "s1".into(),
            key: keys::parse(std::path::Path::new("bench"), new.pem.as_bytes()).expect("parse"),
        };
        group.bench_function(format!("sign_{name}"), |b| {
            b.iter(|| sign_chunks(&key, [msg.as_slice()]).expect("sign"))
        });
        let signed = [
            sign_chunks(&key, [msg.as_slice()])
                .expect("sign")
                .as_bytes(),
            &msg,
        ]
        .concat();
        let cache = Cache::default();
        let record = DomainKey::parse(new.txt.as_bytes()).expect("record");
        cache.insert(
            "s1._domainkey.example.test.".into(),
            Txt::from(record),
            std::time::Instant::now() + std::time::Duration::from_secs(3600),
        );
        let cache = Arc::new(cache);
        group.bench_function(format!("verify_{name}"), |b| {
            b.iter(|| {
                let parsed = AuthenticatedMessage::parse(&signed).expect("parse");
                let out =
                    rt.block_on(auth.verify_dkim(Parameters::new(&parsed).with_txt_cache(&*cache)));
                assert_eq!(out[0].result(), &DkimResult::Pass);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, dkim);
criterion_main!(benches);
