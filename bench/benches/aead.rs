//! One AES-128-GCM seal and one open at packet sizes, through aws-lc-rs and through
//! quench's own AES-GCM (`quench::crypto::small_gcm`: 128-bit code up to `SMALL_MAX`, the
//! AVX-512 VAES code above it where the CPU has it), in one run: where the fixed per-call
//! cost sits and where the crossover belongs.
//! Run `cargo bench -p quench-bench --bench aead`.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use quench::crypto::small_gcm::SmallGcm;

/// A short header's size: the AAD of a 1-RTT packet with a 12-byte CID.
const AAD: [u8; 15] = [0x41; 15];
const KEY: [u8; 16] = [7; 16];

fn seal_and_open(c: &mut Criterion) {
    let aws = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &KEY).unwrap());
    let ours = SmallGcm::new(&KEY).expect("AES-NI and PCLMULQDQ");
    let mut g = c.benchmark_group("aes128gcm_seal_open");
    for len in [40usize, 100, 150, 256, 512, 1200, 1452] {
        g.throughput(Throughput::Bytes(len as u64));
        let mut buf = Vec::with_capacity(len + 16);
        buf.resize(len, 0x5a);
        let mut pn = 0u64;
        g.bench_function(BenchmarkId::new("aws-lc", len), |b| {
            b.iter(|| {
                pn += 1;
                aws.seal_in_place_append_tag(nonce(pn), Aad::from(&AAD), &mut buf)
                    .unwrap();
                let n = aws
                    .open_in_place(nonce(pn), Aad::from(&AAD), &mut buf)
                    .unwrap()
                    .len();
                buf.truncate(n);
            })
        });
        if len <= ours.max_payload() {
            let mut packet = vec![0x5au8; AAD.len() + len + 16];
            g.bench_function(BenchmarkId::new("quench", len), |b| {
                b.iter(|| {
                    pn += 1;
                    let n = nonce_bytes(pn);
                    ours.seal_in_place(&n, &mut packet, AAD.len());
                    assert!(ours.open_in_place(&n, &mut packet, AAD.len()));
                })
            });
        }
    }
    g.finish();
}

fn nonce_bytes(pn: u64) -> [u8; 12] {
    let mut n = [9u8; 12];
    for (b, p) in n[4..].iter_mut().zip(pn.to_be_bytes()) {
        *b ^= p;
    }
    n
}

fn nonce(pn: u64) -> Nonce {
    Nonce::assume_unique_for_key(nonce_bytes(pn))
}

criterion_group!(benches, seal_and_open);
criterion_main!(benches);
