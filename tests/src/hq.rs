//! `hq-interop` (HTTP/0.9 over QUIC): `GET /path\r\n` + FIN on a bidirectional stream; the
//! server answers with the raw body and FIN. A path that names no file but is `/N` (decimal)
//! is answered with N bytes, so transfers need no fixture files.
//!
//! Written over `AsyncRead` / [`QuicSend`] so every peer stack runs the same code.

use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::perf;
use crate::report::Report;
use crate::stream::QuicSend;

/// Longest request line we accept (`GET ` + path + CRLF).
pub const MAX_REQUEST: usize = 4096;
/// Stream error code for a request we cannot serve (no such file, bad request).
pub const REQUEST_REJECTED: u32 = 0x1;

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
pub fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
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

/// Reads the whole request (to FIN), refusing one longer than [`MAX_REQUEST`].
async fn read_request(recv: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>> {
    let mut request = Vec::new();
    recv.take(MAX_REQUEST as u64 + 1)
        .read_to_end(&mut request)
        .await?;
    if request.len() > MAX_REQUEST {
        bail!("request longer than {MAX_REQUEST} bytes");
    }
    Ok(request)
}

/// Server side of one stream.
pub async fn serve(
    mut send: impl QuicSend,
    mut recv: impl AsyncRead + Unpin,
    root: Option<&Path>,
) -> Result<()> {
    let request = read_request(&mut recv).await.context("reading request")?;
    let path = match parse_request(&request) {
        Ok(path) => path,
        Err(e) => {
            send.reset(REQUEST_REJECTED)?;
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
                send.reset(REQUEST_REJECTED)?;
                bail!("no such file: {path}");
            }
        },
    }
    send.finish()?;
    Ok(())
}

/// Client side on a freshly opened stream: GET `path`, return the body; `on_data` sees
/// every chunk received.
pub async fn get(
    mut send: impl QuicSend,
    mut recv: impl AsyncRead + Unpin,
    path: &str,
    mut on_data: impl FnMut(u64),
) -> Result<Vec<u8>> {
    send.write_all(format!("GET {path}\r\n").as_bytes()).await?;
    send.finish()?;
    let mut body = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv
            .read(&mut buf)
            .await
            .with_context(|| format!("GET {path}"))?;
        if n == 0 {
            return Ok(body);
        }
        on_data(n as u64);
        body.extend_from_slice(&buf[..n]);
    }
}

/// The paths a client GETs: `--get` as given, else one `/N` per stream splitting `--down`.
pub fn paths(gets: &[String], down: u64, total_streams: u64) -> Vec<String> {
    if !gets.is_empty() {
        return gets.to_vec();
    }
    (0..total_streams)
        .map(|i| format!("/{}", crate::share(down, total_streams, i)))
        .collect()
}

/// The report for bodies received in request order: total bytes, count, and the SHA-256 of
/// their concatenation (what the tests compare against the files served).
pub fn report(bodies: &[Vec<u8>]) -> Report {
    let mut hasher = Sha256::new();
    let mut report = Report::default();
    for body in bodies {
        hasher.update(body);
        report.bytes_down += body.len() as u64;
    }
    report.streams = bodies.len() as u64;
    report.sha256 = Some(hex::encode(hasher.finalize()));
    report
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

    #[test]
    fn default_paths_split_the_download() {
        assert_eq!(paths(&[], 10, 3), ["/4", "/3", "/3"]);
        assert_eq!(paths(&["/a".to_string()], 10, 3), ["/a"]);
    }
}
