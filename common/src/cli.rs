//! The flags every ccfleet binary shares, and loading the configuration from them.

use std::path::PathBuf;

use crate::config::{Config, Sources};

/// `--config FILE` and `--set section.key=value`, flattened into each binary's parser.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file (see deploy/ccfleet.example.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one key, e.g. `--set worker.max_sessions=8`. Wins over the file and the
    /// environment (`CCFLEET__WORKER__MAX_SESSIONS`).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    pub overrides: Vec<(String, String)>,
}

fn parse_override(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    Ok((key.trim().to_owned(), value.to_owned()))
}

impl ConfigArgs {
    /// Loads the configuration, or prints what is wrong and exits with status 64.
    pub fn load_or_exit(&self, program: &str) -> Config {
        match Config::load(&Sources::from_process(
            self.config.clone(),
            self.overrides.clone(),
        )) {
            Ok(config) => config,
            Err(err) => {
                let mut message = format!("{program}: {err}");
                let mut source = std::error::Error::source(&err);
                while let Some(inner) = source {
                    message.push_str(&format!(": {inner}"));
                    source = inner.source();
                }
                eprintln!("{message}");
                std::process::exit(crate::EXIT_CONFIG);
            }
        }
    }
}

/// Exit status of a failed probe.
pub const EXIT_PROBE_FAILED: i32 = 1;

/// A container health check without curl in the image: `GET url` (plain `http://host:port/
/// path`), exit 0 when the answer is 2xx, [`EXIT_PROBE_FAILED`] otherwise, printing why.
/// Each binary offers it as `--probe URL`, run before any configuration is loaded.
pub fn probe(url: &str, timeout: std::time::Duration) -> i32 {
    match probe_status(url, timeout) {
        Ok(status) if (200..300).contains(&status) => 0,
        Ok(status) => {
            eprintln!("probe {url}: HTTP {status}");
            EXIT_PROBE_FAILED
        }
        Err(err) => {
            eprintln!("probe {url}: {err}");
            EXIT_PROBE_FAILED
        }
    }
}

/// The status code of `GET url`.
pub fn probe_status(url: &str, timeout: std::time::Duration) -> std::io::Result<u16> {
    use std::io::{Error, ErrorKind, Read, Write};
    use std::net::ToSocketAddrs;

    let invalid = |why: &str| Error::new(ErrorKind::InvalidInput, why.to_owned());
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("only http:// URLs can be probed"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(invalid("the URL names no host"));
    }
    let target = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = target
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| invalid("the host resolves to no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // One write: `write!` on a socket may send the request in pieces, and a server that
    // answers after the first piece and closes would reset the connection under the rest.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: ccfleet-probe\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;
    // The status line fits in the first read of any sane server; read up to its end.
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 128];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1."))
        .and_then(|l| l.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| Error::new(ErrorKind::InvalidData, "the answer is not HTTP"))?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;

    /// One-shot server answering `status_line` to the first request.
    fn serve_once(status_line: &'static str) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Like any HTTP server: the whole request head, then the answer.
            let (mut head, mut buf) = (Vec::new(), [0u8; 512]);
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(s, "{status_line}\r\ncontent-length: 2\r\n\r\nok");
        });
        format!("http://{addr}/readyz")
    }

    #[test]
    fn a_2xx_answer_passes_and_anything_else_fails() {
        let t = Duration::from_secs(5);
        assert_eq!(probe(&serve_once("HTTP/1.1 200 OK"), t), 0);
        assert_eq!(
            probe(&serve_once("HTTP/1.1 503 Service Unavailable"), t),
            EXIT_PROBE_FAILED
        );
        assert_eq!(
            probe_status(&serve_once("HTTP/1.0 204 No Content"), t).unwrap(),
            204
        );
    }

    #[test]
    fn nothing_listening_and_bad_urls_fail_with_a_reason() {
        let t = Duration::from_secs(5);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert!(probe_status(&format!("http://{addr}/healthz"), t).is_err());
        assert_eq!(
            probe(&format!("http://{addr}/healthz"), t),
            EXIT_PROBE_FAILED
        );
        assert!(probe_status("https://127.0.0.1:1/", t).is_err());
        assert!(probe_status("http:///x", t).is_err());
    }
}
