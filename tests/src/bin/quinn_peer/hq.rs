//! `hq-interop` (HTTP/0.9 over QUIC): `GET /path\r\n` + FIN on a bidirectional stream; the
//! server answers with the raw body and FIN. A path that names no file but is `/N` (decimal)
//! is answered with N bytes, so transfers need no fixture files.

use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::io::AsyncReadExt;

use crate::client::ReceiveTriggers;
use crate::perf;

/// Longest request line we accept (`GET ` + path + CRLF).
const MAX_REQUEST: usize = 4096;
/// Stream error code for a request we cannot serve (no such file, bad request).
const REQUEST_REJECTED: u32 = 0x1;

/// Extracts the path from `GET /path\r\n`; tolerant of a bare `\n` and trailing spaces.
pub fn parse_request(request: &[u8]) -> Result<&str> {
    let line = std::str::from_utf8(request).context("request is not UTF-8")?;
    let line = line.trim_end_matches(['\r', '\n', ' ']);
    let path = line
        .strip_prefix("GET ")
        .ok_or_else(|| anyhow!("not a GET request: {line:?}"))?
        .trim();
    if !path.starts_with('/') || path.contains(['\r', '\n']) {
        bail!("bad request path {path:?}");
    }
    Ok(path)
}

/// Maps a request path under `root`, refusing anything that could escape it.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let relative = Path::new(path.trim_start_matches('/'));
    if relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        Some(root.join(relative))
    } else {
        None
    }
}

/// Server side of one stream.
pub async fn serve(mut send: SendStream, mut recv: RecvStream, root: Option<&Path>) -> Result<()> {
    let request = recv
        .read_to_end(MAX_REQUEST)
        .await
        .context("reading request")?;
    let path = match parse_request(&request) {
        Ok(path) => path,
        Err(e) => {
            send.reset(VarInt::from_u32(REQUEST_REJECTED))?;
            return Err(e);
        }
    };
    let file = root.and_then(|root| resolve(root, path));
    match file {
        Some(file) if file.is_file() => {
            let mut file = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                send.write_all(&buf[..n]).await?;
            }
        }
        _ => match path[1..].parse::<u64>() {
            Ok(len) => perf::write_fill(&mut send, len).await?,
            Err(_) => {
                send.reset(VarInt::from_u32(REQUEST_REJECTED))?;
                bail!("no such file: {path}");
            }
        },
    }
    send.finish()?;
    Ok(())
}

/// Client side: GET `path`, return the body.
pub async fn get(
    conn: &quinn::Connection,
    path: &str,
    triggers: &ReceiveTriggers,
) -> Result<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await.context("opening stream")?;
    send.write_all(format!("GET {path}\r\n").as_bytes()).await?;
    send.finish()?;
    let mut body = Vec::new();
    while let Some(chunk) = recv
        .read_chunk(usize::MAX, true)
        .await
        .with_context(|| format!("GET {path}"))?
    {
        triggers.on_received(chunk.bytes.len() as u64);
        body.extend_from_slice(&chunk.bytes);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_lines() {
        assert_eq!(
            parse_request(b"GET /index.html\r\n").unwrap(),
            "/index.html"
        );
        assert_eq!(parse_request(b"GET /42\n").unwrap(), "/42");
        assert_eq!(parse_request(b"GET /a/b").unwrap(), "/a/b");
        assert!(parse_request(b"PUT /x\r\n").is_err());
        assert!(parse_request(b"GET x\r\n").is_err());
        assert!(parse_request(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn refuses_paths_outside_root() {
        let root = Path::new("/srv");
        assert_eq!(
            resolve(root, "/a/b.txt"),
            Some(PathBuf::from("/srv/a/b.txt"))
        );
        assert_eq!(resolve(root, "/../etc/passwd"), None);
        assert_eq!(resolve(root, "/a/../../x"), None);
        assert_eq!(resolve(root, "/./x"), None);
    }
}
