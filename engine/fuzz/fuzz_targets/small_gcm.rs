//! Differential: quench's own AES-GCM against aws-lc, through both of its code paths (the
//! AVX-512 VAES one where the CPU has it, and the 128-bit one, up to `SMALL_MAX`). Input: a
//! selector byte (AES-128 or AES-256), 32 key bytes, a 12-byte nonce, an AAD length byte,
//! then a packet (AAD | payload | 16 tag bytes). Opening those bytes must give aws-lc's
//! verdict, aws-lc's plaintext when they authenticate and an untouched packet when they do
//! not; sealing the payload must give aws-lc's ciphertext and tag, and open again.
#![no_main]

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use libfuzzer_sys::fuzz_target;
use quench::crypto::small_gcm::{SmallGcm, TAG_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((head, packet)) = data.split_at_checked(1 + 32 + 12 + 1) else {
        return;
    };
    let (alg, key) = if head[0] & 1 == 0 {
        (&AES_128_GCM, &head[1..17])
    } else {
        (&AES_256_GCM, &head[1..33])
    };
    let nonce: [u8; 12] = head[33..45].try_into().unwrap();
    let aad_len = usize::from(head[45] % 80).min(packet.len());
    let Some(len) = packet.len().checked_sub(aad_len + TAG_LEN) else {
        return;
    };
    let Some(full) = SmallGcm::new(key) else {
        return; // no AES-NI/PCLMULQDQ: the engine uses aws-lc alone there
    };
    let narrow = SmallGcm::new(key).expect("as above").without_wide();
    for ours in [full, narrow] {
        if len <= ours.max_payload() {
            check(&ours, alg, key, nonce, packet, aad_len, len);
        }
    }
});

fn check(
    ours: &SmallGcm,
    alg: &'static aws_lc_rs::aead::Algorithm,
    key: &[u8],
    nonce: [u8; 12],
    packet: &[u8],
    aad_len: usize,
    len: usize,
) {
    let theirs = LessSafeKey::new(UnboundKey::new(alg, key).unwrap());
    let aad = &packet[..aad_len];
    let nonce_for = || Nonce::assume_unique_for_key(nonce);

    // Open whatever bytes came in.
    let mut opened = packet.to_vec();
    let ok = ours.open_in_place(&nonce, &mut opened, aad_len);
    let mut reference = packet[aad_len..].to_vec();
    let verdict = theirs.open_in_place(nonce_for(), Aad::from(aad), &mut reference);
    assert_eq!(ok, verdict.is_ok(), "verdicts differ");
    match verdict {
        Ok(plain) => assert_eq!(&opened[aad_len..aad_len + len], plain),
        Err(_) => assert_eq!(opened, packet, "a failed open wrote to the packet"),
    }

    // Seal the payload bytes as plaintext.
    let mut sealed = packet.to_vec();
    ours.seal_in_place(&nonce, &mut sealed, aad_len);
    let mut body = packet[aad_len..aad_len + len].to_vec();
    let tag = theirs
        .seal_in_place_separate_tag(nonce_for(), Aad::from(aad), &mut body)
        .unwrap();
    assert_eq!(&sealed[aad_len..aad_len + len], &body[..]);
    assert_eq!(&sealed[aad_len + len..], tag.as_ref());
    assert!(ours.open_in_place(&nonce, &mut sealed, aad_len));
    assert_eq!(&sealed[..aad_len + len], &packet[..aad_len + len]);
}
