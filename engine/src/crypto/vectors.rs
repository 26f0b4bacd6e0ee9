//! RFC 9001 Appendix A and RFC 9369 Appendix A sample packets, as named constants,
//! and the tests that check our key schedule and packet protection against them.
//! (Generated from the RFC text; values are hex.)
#![allow(dead_code)]

/// RFC 9001 Appendix A (QUIC version 1).
pub mod rfc9001 {
    pub const INITIAL_SECRET: &str =
        "7db5df06e7a69e432496adedb00851923595221596ae2ae9fb8115c1e9ed0a44";
    pub const CLIENT_INITIAL_SECRET: &str =
        "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea";
    pub const CLIENT_KEY: &str = "1f369613dd76d5467730efcbe3b1a22d";
    pub const CLIENT_IV: &str = "fa044b2f42a3fd3b46fb255c";
    pub const CLIENT_HP: &str = "9f50449e04a0e810283a1e9933adedd2";
    pub const SERVER_INITIAL_SECRET: &str =
        "3c199828fd139efd216c155ad844cc81fb82fa8d7446fa7d78be803acdda951b";
    pub const SERVER_KEY: &str = "cf3a5331653c364c88f0f379b6067e37";
    pub const SERVER_IV: &str = "0ac1493ca1905853b0bba03e";
    pub const SERVER_HP: &str = "c206b8d9b9f0f37644430b490eeaa314";
    pub const CLIENT_CRYPTO_FRAME: &str = concat!(
        "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e86804fe3a47f06a2b69484c000004130113",
        "02010000c000000010000e00000b6578616d706c652e636f6dff01000100000a00080006001d00170018001000070005",
        "04616c706e000500050100000000003300260024001d00209370b2c9caa47fbabaf4559fedba753de171fa71f50f1ce1",
        "5d43e994ec74d748002b0003020304000d0010000e0403050306030203080408050806002d00020101001c0002400100",
        "3900320408ffffffffffffffff05048000ffff07048000ffff0801100104800075300901100f088394c8f03e51570806",
        "048000ffff",
    );
    pub const CLIENT_HEADER: &str = "c300000001088394c8f03e5157080000449e00000002";
    pub const CLIENT_SAMPLE: &str = "d1b1c98dd7689fb8ec11d242b123dc9b";
    pub const CLIENT_MASK: &str = "437b9aec36";
    pub const CLIENT_PACKET: &str = concat!(
        "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11d242b123dc9bd8bab936b47d92ec356c",
        "0bab7df5976d27cd449f63300099f3991c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c",
        "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df621230c83711b39343fa028cea7f7fb5ff89",
        "eac2308249a02252155e2347b63d58c5457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208",
        "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec4e15daf8500a6ef69ec4e3feb6b1d98e",
        "610ac8b7ec3faf6ad760b7bad1db4ba3485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db",
        "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c7b4378e846d29f37ed7b4ea9ec5d82e7",
        "961b7f25a9323851f681d582363aa5f89937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556",
        "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c7468449a13d8e3b95811a198f3491de3e7",
        "fe942b330407abf82a4ed7c1b311663ac69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00",
        "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632291d6a418211cc2962e20fe47feb3edf",
        "330f2c603a9d48c0fcb5699dbfe5896425c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd",
        "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ffef132eef2fa09346aee33c28eb130ff2",
        "8f5b766953334113211996d20011a198e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd",
        "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73203a4a13e96f5432ec0fd4a1ee65accd",
        "d5e3904df54c1da510b0ff20dcc0c77fcb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e",
        "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03adea2e1fbc5aa463d08ca19896d2bf59a07",
        "1b851e6c239052172f296bfb5e72404790a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2",
        "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f440591f355e12d439ff150aab7613499d",
        "bd49adabc8676eef023b15b65bfc5ca06948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e",
        "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0be79e2fb8f5d5fbbe2e30ecadd220723",
        "c8c0aea8078cdfcb3868263ff8f0940054da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab",
        "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9f96f3ca9ec1dde434da7d2d392b905dd",
        "f3d1f9af93d1af5950bd493f5aa731b4056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064",
        "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241e221af44860018ab0856972e194cd934",
    );
    pub const SERVER_PAYLOAD: &str = concat!(
        "02000000000600405a020000560303eefce7f7b37ba1d1632e96677825ddf73988cfc79825df566dc5430b9a045a1200",
        "130100002e00330024001d00209d3c940d89690b84d08a60993c144eca684d1081287c834d5311bcf32bb9da1a002b00",
        "020304",
    );
    pub const SERVER_HEADER: &str = "c1000000010008f067a5502a4262b50040750001";
    pub const SERVER_SAMPLE: &str = "2cd0991cd25b0aac406a5816b6394100";
    pub const SERVER_MASK: &str = "2ec0d8356a";
    pub const SERVER_PACKET: &str = concat!(
        "cf000000010008f067a5502a4262b5004075c0d95a482cd0991cd25b0aac406a5816b6394100f37a1c69797554780bb3",
        "8cc5a99f5ede4cf73c3ec2493a1839b3dbcba3f6ea46c5b7684df3548e7ddeb9c3bf9c73cc3f3bded74b562bfb19fb84",
        "022f8ef4cdd93795d77d06edbb7aaf2f58891850abbdca3d20398c276456cbc42158407dd074ee",
    );
    pub const RETRY_PACKET: &str =
        "ff000000010008f067a5502a4262b5746f6b656e04a265ba2eff4d829058fb3f0f2496ba";
    pub const CHACHA_SECRET: &str =
        "9ac312a7f877468ebe69422748ad00a15443f18203a07d6060f688f30f21632b";
    pub const CHACHA_KEY: &str = "c6d98ff3441c3fe1b2182094f69caa2ed4b716b65488960a7a984979fb23e1c8";
    pub const CHACHA_IV: &str = "e0459b3474bdd0e44a41c144";
    pub const CHACHA_HP: &str = "25a282b9e82f06f21f488917a4fc8f1b73573685608597d0efcb076b0ab7a7a4";
    pub const CHACHA_KU: &str = "1223504755036d556342ee9361d253421a826c9ecdf3c7148684b36b714881f9";
    pub const CHACHA_NONCE: &str = "e0459b3474bdd0e46d417eb0";
    pub const CHACHA_HEADER: &str = "4200bff4";
    pub const CHACHA_PAYLOAD: &str = "01";
    pub const CHACHA_CIPHERTEXT: &str = "655e5cd55c41f69080575d7999c25a5bfb";
    pub const CHACHA_SAMPLE: &str = "5e5cd55c41f69080575d7999c25a5bfb";
    pub const CHACHA_MASK: &str = "aefefe7d03";
    pub const CHACHA_PROTECTED_HEADER: &str = "4cfe4189";
    pub const CHACHA_PACKET: &str = "4cfe4189655e5cd55c41f69080575d7999c25a5bfb";
}

/// RFC 9369 Appendix A (QUIC version 2).
pub mod rfc9369 {
    pub const INITIAL_SECRET: &str =
        "2062e8b3cd8d52092614b8071d0aa1fb7c2e3ac193f78b280e72d8f5751f6aba";
    pub const CLIENT_INITIAL_SECRET: &str =
        "14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b";
    pub const CLIENT_KEY: &str = "8b1a0bc121284290a29e0971b5cd045d";
    pub const CLIENT_IV: &str = "91f73e2351d8fa91660e909f";
    pub const CLIENT_HP: &str = "45b95e15235d6f45a6b19cbcb0294ba9";
    pub const SERVER_INITIAL_SECRET: &str =
        "0263db1782731bf4588e7e4d93b7463907cb8cd8200b5da55a8bd488eafc37c1";
    pub const SERVER_KEY: &str = "82db637861d55e1d011f19ea71d5d2a7";
    pub const SERVER_IV: &str = "dd13c276499c0249d3310652";
    pub const SERVER_HP: &str = "edf6d05c83121201b436e16877593c3a";
    pub const CLIENT_CRYPTO_FRAME: &str = concat!(
        "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e86804fe3a47f06a2b69484c000004130113",
        "02010000c000000010000e00000b6578616d706c652e636f6dff01000100000a00080006001d00170018001000070005",
        "04616c706e000500050100000000003300260024001d00209370b2c9caa47fbabaf4559fedba753de171fa71f50f1ce1",
        "5d43e994ec74d748002b0003020304000d0010000e0403050306030203080408050806002d00020101001c0002400100",
        "3900320408ffffffffffffffff05048000ffff07048000ffff0801100104800075300901100f088394c8f03e51570806",
        "048000ffff",
    );
    pub const CLIENT_HEADER: &str = "d36b3343cf088394c8f03e5157080000449e00000002";
    pub const CLIENT_SAMPLE: &str = "ffe67b6abcdb4298b485dd04de806071";
    pub const CLIENT_MASK: &str = "94a0c95e80";
    pub const CLIENT_PACKET: &str = concat!(
        "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485dd04de806071bf03dceebfa162e75d6c",
        "96058bdbfb127cdfcbf903388e99ad049f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d",
        "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a12834e3f249a78d395e0d18f4d766004",
        "f1a2674802a747eaa901c3f10cda5500cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68",
        "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff3312ae50b187c1433c0f028edcc4c2838b",
        "6a9bfc226ca4b4530e7a4ccee1bfa2a3d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd",
        "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520bcfb7966fc49b393f0061d974a2706df",
        "8c4a9449f11d7f3d2dcbb90c6b877045636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f",
        "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c1216ccce2d0193f958bb3850a833f7ae43",
        "2b65bc5a53975c155aa4bcb4f7b2c4e54df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4",
        "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b8017c25ca9052ca1079d8b78aebd4787",
        "6d330a30f6a8c6d61dd1ab5589329de714d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9",
        "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91abfe43960977c87471cf9ad4074d30e1",
        "0d6a7f03c63bd5d4317f68ff325ba3bd80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db",
        "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18d703dd84045a274ae8bfa73379661388",
        "d6991fe39b0d93debb41700b41f90a15c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc",
        "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61f6b5b984d4d3dfa033c1bb7e4f0037fe",
        "bf406d91c0dccf32acf423cfa1e7071010d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b",
        "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e06ebfde206bfb0fcbc0edc4ebec30966",
        "1bdd908d532eb0c6adc38b7ca7331dce8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1",
        "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1e86215c2d54e6670e07383a27bbffb5a",
        "ddf47d66aa85a0c6f9f32e59d85a44dd5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3",
        "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89d5974ee12e5cf7d5da4d6a31123041f3",
        "3e61407e76cffcdcfd7e19ba58cf4b536f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19",
        "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96ba18b2faa745b6fe189cf772a9f84cbfc",
    );
    pub const SERVER_PAYLOAD: &str = concat!(
        "02000000000600405a020000560303eefce7f7b37ba1d1632e96677825ddf73988cfc79825df566dc5430b9a045a1200",
        "130100002e00330024001d00209d3c940d89690b84d08a60993c144eca684d1081287c834d5311bcf32bb9da1a002b00",
        "020304",
    );
    pub const SERVER_HEADER: &str = "d16b3343cf0008f067a5502a4262b50040750001";
    pub const SERVER_SAMPLE: &str = "6f05d8a4398c47089698baeea26b91eb";
    pub const SERVER_MASK: &str = "4dd92e91ea";
    pub const SERVER_PACKET: &str = concat!(
        "dc6b3343cf0008f067a5502a4262b5004075d92faaf16f05d8a4398c47089698baeea26b91eb761d9b89237bbf872630",
        "17915358230035f7fd3945d88965cf17f9af6e16886c61bfc703106fbaf3cb4cfa52382dd16a393e42757507698075b2",
        "c984c707f0a0812d8cd5a6881eaf21ceda98f4bd23f6fe1a3e2c43edd9ce7ca84bed8521e2e140",
    );
    pub const RETRY_PACKET: &str =
        "cf6b3343cf0008f067a5502a4262b5746f6b656ec8646ce8bfe33952d955543665dcc7b6";
    pub const CHACHA_SECRET: &str =
        "9ac312a7f877468ebe69422748ad00a15443f18203a07d6060f688f30f21632b";
    pub const CHACHA_KEY: &str = "3bfcddd72bcf02541d7fa0dd1f5f9eeea817e09a6963a0e6c7df0f9a1bab90f2";
    pub const CHACHA_IV: &str = "a6b5bc6ab7dafce30ffff5dd";
    pub const CHACHA_HP: &str = "d659760d2ba434a226fd37b35c69e2da8211d10c4f12538787d65645d5d1b8e2";
    pub const CHACHA_KU: &str = "c69374c49e3d2a9466fa689e49d476db5d0dfbc87d32ceeaa6343fd0ae4c7d88";
    pub const CHACHA_NONCE: &str = "a6b5bc6ab7dafce328ff4a29";
    pub const CHACHA_HEADER: &str = "4200bff4";
    pub const CHACHA_PAYLOAD: &str = "01";
    pub const CHACHA_CIPHERTEXT: &str = "0ae7b6b932bc27d786f4bc2bb20f2162ba";
    pub const CHACHA_SAMPLE: &str = "e7b6b932bc27d786f4bc2bb20f2162ba";
    pub const CHACHA_MASK: &str = "97580e32bf";
    pub const CHACHA_PROTECTED_HEADER: &str = "5558b1c6";
    pub const CHACHA_PACKET: &str = "5558b1c60ae7b6b932bc27d786f4bc2bb20f2162ba";
}

/// The client's Destination Connection ID used by every sample (RFC 9001 §A).
pub const CLIENT_DCID: &str = "8394c8f03e515708";
/// Client Initial payload: the CRYPTO frame padded with PADDING to this length (§A.2).
pub const CLIENT_PAYLOAD_LEN: usize = 1162;
/// Packet numbers used by the samples.
pub const CLIENT_PN: u64 = 2;
pub const SERVER_PN: u64 = 1;
pub const CHACHA_PN: u64 = 654_360_564;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).expect("valid hex in vector")
}

/// Seals `payload` behind `header` (whose pn field starts at `pn_offset`), applies header
/// protection, and returns the packet.
fn protect_packet(
    keys: &super::DirectionalKeys,
    header: &[u8],
    payload: &[u8],
    pn: u64,
    pn_offset: usize,
) -> Vec<u8> {
    use super::{header_protection, TAG_LEN};
    let pn_len = header.len() - pn_offset;
    let mut pkt = header.to_vec();
    pkt.extend_from_slice(payload);
    pkt.extend_from_slice(&[0; TAG_LEN]);
    keys.packet
        .seal_in_place(pn, &mut pkt, header.len())
        .unwrap();
    header_protection::protect(&keys.header, &mut pkt, pn_offset, pn_len).unwrap();
    pkt
}

/// Removes header protection and opens; returns (truncated pn, pn_len, plaintext).
fn unprotect_packet(
    keys: &super::DirectionalKeys,
    packet: &[u8],
    pn_offset: usize,
    full_pn: u64,
) -> (u64, usize, Vec<u8>) {
    let mut pkt = packet.to_vec();
    let (pn_len, truncated) =
        super::header_protection::unprotect(&keys.header, &mut pkt, pn_offset).unwrap();
    let header_len = pn_offset + pn_len;
    let n = keys
        .packet
        .open_in_place(full_pn, &mut pkt, header_len)
        .unwrap();
    (truncated, pn_len, pkt[header_len..header_len + n].to_vec())
}

macro_rules! vector_tests {
    ($module:ident, $consts:ident, $version:expr, $salt:expr) => {
        mod $module {
            use super::super::header_protection::{self, HeaderKey};
            use super::super::secrets::{initial_keys, initial_secrets, Secret};
            use super::super::{retry, Suite};
            use super::$consts as v;
            use super::*;
            use crate::Side;

            const VERSION: u32 = $version;

            /// §A.1: initial secret, client and server key/iv/hp.
            #[test]
            fn a1_initial_keys() {
                let salt = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &$salt);
                let extracted = aws_lc_rs::hmac::sign(&salt, &h(CLIENT_DCID));
                assert_eq!(extracted.as_ref(), &h(v::INITIAL_SECRET)[..]);

                let (client, server) = initial_secrets(VERSION, &h(CLIENT_DCID));
                assert_eq!(client.as_bytes(), &h(v::CLIENT_INITIAL_SECRET)[..]);
                assert_eq!(server.as_bytes(), &h(v::SERVER_INITIAL_SECRET)[..]);
                let (key, iv, hp) = client.raw_keys(VERSION);
                assert_eq!(
                    (key, iv, hp),
                    (h(v::CLIENT_KEY), h(v::CLIENT_IV), h(v::CLIENT_HP))
                );
                let (key, iv, hp) = server.raw_keys(VERSION);
                assert_eq!(
                    (key, iv, hp),
                    (h(v::SERVER_KEY), h(v::SERVER_IV), h(v::SERVER_HP))
                );
            }

            /// §A.2: protect the client Initial byte for byte, then unprotect and open it.
            #[test]
            fn a2_client_initial() {
                let mut payload = h(v::CLIENT_CRYPTO_FRAME);
                payload.resize(CLIENT_PAYLOAD_LEN, 0);
                let header = h(v::CLIENT_HEADER);
                let pn_offset = header.len() - 4;

                let client = initial_keys(VERSION, &h(CLIENT_DCID), Side::Client);
                let sample: [u8; 16] = h(v::CLIENT_SAMPLE).try_into().unwrap();
                assert_eq!(client.local.header.mask(&sample)[..], h(v::CLIENT_MASK)[..]);
                let pkt = protect_packet(&client.local, &header, &payload, CLIENT_PN, pn_offset);
                assert_eq!(hex::encode(&pkt), v::CLIENT_PACKET);

                let server = initial_keys(VERSION, &h(CLIENT_DCID), Side::Server);
                let (pn, pn_len, plain) =
                    unprotect_packet(&server.remote, &h(v::CLIENT_PACKET), pn_offset, CLIENT_PN);
                assert_eq!((pn, pn_len), (CLIENT_PN, 4));
                assert_eq!(plain, payload);
            }

            /// §A.3: the server Initial (2-byte packet number).
            #[test]
            fn a3_server_initial() {
                let payload = h(v::SERVER_PAYLOAD);
                let header = h(v::SERVER_HEADER);
                let pn_offset = header.len() - 2;
                let server = initial_keys(VERSION, &h(CLIENT_DCID), Side::Server);
                let sample: [u8; 16] = h(v::SERVER_SAMPLE).try_into().unwrap();
                assert_eq!(server.local.header.mask(&sample)[..], h(v::SERVER_MASK)[..]);
                let pkt = protect_packet(&server.local, &header, &payload, SERVER_PN, pn_offset);
                assert_eq!(hex::encode(&pkt), v::SERVER_PACKET);

                let client = initial_keys(VERSION, &h(CLIENT_DCID), Side::Client);
                let (pn, pn_len, plain) =
                    unprotect_packet(&client.remote, &h(v::SERVER_PACKET), pn_offset, SERVER_PN);
                assert_eq!((pn, pn_len), (SERVER_PN, 2));
                assert_eq!(plain, payload);
            }

            /// §A.4: the Retry Integrity Tag.
            #[test]
            fn a4_retry_tag() {
                let pkt = h(v::RETRY_PACKET);
                let (body, tag) = pkt.split_at(pkt.len() - 16);
                let odcid = h(CLIENT_DCID);
                assert_eq!(
                    retry::retry_integrity_tag(VERSION, &odcid, body)[..],
                    tag[..]
                );
                assert!(retry::verify_retry(VERSION, &odcid, &pkt));
                let mut bad = pkt.clone();
                bad[10] ^= 1;
                assert!(!retry::verify_retry(VERSION, &odcid, &bad));
                assert!(!retry::verify_retry(VERSION, &odcid[1..], &pkt));
                assert!(!retry::verify_retry(VERSION, &odcid, &pkt[..15]));
                let other = if VERSION == super::super::VERSION_2 {
                    1
                } else {
                    super::super::VERSION_2
                };
                assert!(!retry::verify_retry(other, &odcid, &pkt));
            }

            /// §A.5: ChaCha20-Poly1305 short header packet, including "quic ku".
            #[test]
            fn a5_chacha20_short_header() {
                let secret = Secret::new(Suite::ChaCha20Poly1305, &h(v::CHACHA_SECRET));
                let (key, iv, hp) = secret.raw_keys(VERSION);
                assert_eq!(
                    (key, iv, hp),
                    (h(v::CHACHA_KEY), h(v::CHACHA_IV), h(v::CHACHA_HP))
                );
                assert_eq!(secret.next(VERSION).as_bytes(), &h(v::CHACHA_KU)[..]);

                let hk = HeaderKey::new(Suite::ChaCha20Poly1305, &h(v::CHACHA_HP));
                let sample: [u8; 16] = h(v::CHACHA_SAMPLE).try_into().unwrap();
                assert_eq!(hk.mask(&sample)[..], h(v::CHACHA_MASK)[..]);

                let keys = secret.keys(VERSION);
                let header = h(v::CHACHA_HEADER);
                let pkt = protect_packet(&keys, &header, &h(v::CHACHA_PAYLOAD), CHACHA_PN, 1);
                assert_eq!(hex::encode(&pkt[header.len()..]), v::CHACHA_CIPHERTEXT);
                assert_eq!(
                    hex::encode(&pkt[..header.len()]),
                    v::CHACHA_PROTECTED_HEADER
                );
                assert_eq!(hex::encode(&pkt), v::CHACHA_PACKET);
                assert_eq!(header_protection::sample(&pkt, 1).unwrap(), sample);

                let (pn, pn_len, plain) = unprotect_packet(&keys, &pkt, 1, CHACHA_PN);
                assert_eq!((pn, pn_len), (CHACHA_PN & 0xff_ffff, 3));
                assert_eq!(plain, h(v::CHACHA_PAYLOAD));
            }
        }
    };
}

vector_tests!(
    v1_tests,
    rfc9001,
    super::super::VERSION_1,
    super::super::secrets::INITIAL_SALT_V1
);
vector_tests!(
    v2_tests,
    rfc9369,
    super::super::VERSION_2,
    super::super::secrets::INITIAL_SALT_V2
);
