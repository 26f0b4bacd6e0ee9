//! The one JSON line a peer client prints when done (the same format `quench client` prints).

use serde_json::json;

#[derive(Debug, Default)]
pub struct Report {
    /// Mean handshake time over all connections.
    pub handshake_ms: f64,
    pub bytes_down: u64,
    pub bytes_up: u64,
    /// Wall time from the first connection attempt to the last stream's completion.
    pub seconds: f64,
    pub streams: u64,
    /// Hex SHA-256 of all hq-interop bodies concatenated in request order.
    pub sha256: Option<String>,
    pub key_updates: u64,
    /// The largest path MTU (UDP payload) the stack's discovery reached on any connection;
    /// `null` in the JSON when the stack does not expose it (s2n-quic).
    pub max_datagram_size: Option<u64>,
    /// `--alpn echo --datagrams N`: DATAGRAM frames sent, and echoed back intact.
    pub datagrams_sent: Option<u64>,
    pub datagrams_echoed: Option<u64>,
    /// Connections whose TLS handshake resumed a session, where the client resumes.
    pub resumed: Option<u64>,
    /// Connections that sent early data (0-RTT) and had it accepted, where the client
    /// tries 0-RTT.
    pub early_data: Option<u64>,
    /// The QUIC version the connections ended in, where the client says (printed `0x…`).
    pub quic_version: Option<u32>,
    /// Connections that ended in another version than their first flight's (compatible
    /// version negotiation, RFC 9368), where the client negotiates.
    pub version_switches: Option<u64>,
}

impl Report {
    pub fn to_json_line(&self) -> String {
        let throughput_mbps = if self.seconds > 0.0 {
            (self.bytes_down + self.bytes_up) as f64 * 8.0 / self.seconds / 1e6
        } else {
            0.0
        };
        let mut v = json!({
            "handshake_ms": self.handshake_ms,
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "seconds": self.seconds,
            "throughput_mbps": throughput_mbps,
            "streams": self.streams,
            "sha256": self.sha256,
            "key_updates": self.key_updates,
            "max_datagram_size": self.max_datagram_size,
        });
        if let (Some(sent), Some(echoed)) = (self.datagrams_sent, self.datagrams_echoed) {
            v["datagrams_sent"] = sent.into();
            v["datagrams_echoed"] = echoed.into();
        }
        if let Some(resumed) = self.resumed {
            v["resumed"] = resumed.into();
        }
        if let Some(accepted) = self.early_data {
            v["early_data"] = accepted.into();
        }
        if let Some(version) = self.quic_version {
            v["quic_version"] = format!("{version:#x}").into();
        }
        if let Some(switches) = self.version_switches {
            v["version_switches"] = switches.into();
        }
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_has_every_field() {
        let report = Report {
            handshake_ms: 1.5,
            bytes_down: 1_000_000,
            bytes_up: 0,
            seconds: 2.0,
            streams: 3,
            sha256: None,
            key_updates: 1,
            max_datagram_size: Some(1452),
            ..Report::default()
        };
        let v: serde_json::Value = serde_json::from_str(&report.to_json_line()).unwrap();
        assert_eq!(v["bytes_down"], 1_000_000);
        assert_eq!(v["throughput_mbps"], 4.0);
        assert_eq!(v["streams"], 3);
        assert!(v["sha256"].is_null());
        assert_eq!(v["key_updates"], 1);
        assert_eq!(v["max_datagram_size"], 1452);
        assert_eq!(v["handshake_ms"], 1.5);
        assert!(!report.to_json_line().contains('\n'));
        assert!(v.get("quic_version").is_none());
        let v2 = Report {
            quic_version: Some(0x6b33_43cf),
            version_switches: Some(2),
            ..Report::default()
        };
        let v: serde_json::Value = serde_json::from_str(&v2.to_json_line()).unwrap();
        assert_eq!(v["quic_version"], "0x6b3343cf");
        assert_eq!(v["version_switches"], 2);
    }
}
