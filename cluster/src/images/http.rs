//! The wire format of the built-in images' HTTP/1.x side: a request head parsed, a response
//! encoded. Deliberately small: benchmarks open a new connection per request (`ab -c1`), so
//! what matters is one read, one write and closing promptly.

pub struct Request {
    pub method: String,
    pub target: String,
    /// The minor version: 0 or 1.
    pub minor: u8,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn parse(head: &[u8]) -> Option<Request> {
        let head = std::str::from_utf8(head).ok()?;
        let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
        let mut parts = lines.next()?.split(' ');
        let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
        let minor = match version {
            "HTTP/1.0" => 0,
            "HTTP/1.1" => 1,
            _ => return None,
        };
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_string(), v.trim().to_string()))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Request {
            method: method.to_string(),
            target: target.to_string(),
            minor,
            headers,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn keep_alive(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        match self.minor {
            0 => conn.contains("keep-alive"),
            _ => !conn.contains("close"),
        }
    }
}

pub struct Response {
    pub status: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The wire form. HEAD responses carry no body and, like the tutorial's `curl -I` output,
    /// no Content-Length; keep-alive is only announced where the protocol version needs it.
    pub fn encode(&self, head_only: bool, minor: u8, keep_alive: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut line = |k: &str, v: &str| {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        };
        for (k, v) in &self.headers {
            line(k, v);
        }
        if !head_only {
            line("Content-Length", &self.body.len().to_string());
        }
        match (keep_alive, minor) {
            (false, _) => line("Connection", "close"),
            (true, 0) => line("Connection", "keep-alive"),
            (true, _) => {}
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

pub fn http_date() -> String {
    chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// Where a request's head ends, if it has.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_rules() {
        let parse = |s: &str| Request::parse(s.as_bytes()).unwrap();
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n\r\n").keep_alive());
        assert!(!parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive());
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
        assert!(Request::parse(b"GET / SPDY/3\r\n\r\n").is_none());
    }
}
