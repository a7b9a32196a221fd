//! `--publish` specs, in docker's two syntaxes:
//! short `[PUBLISHED:]TARGET[/PROTOCOL]` (ranges like `8080-8081:80-81` allowed) and long
//! `published=P,target=T,protocol=tcp|udp|sctp,mode=ingress|host`.

use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum as Protocol,
    EndpointPortConfigPublishModeEnum as PublishMode,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("empty port spec: use [PUBLISHED:]TARGET[/tcp|udp], e.g. 8080:80")]
    Empty,
    #[error(
        "invalid port {0:?}: ports are numbers from 1 to 65535, e.g. 8080:80 or published=8080,target=80"
    )]
    Port(String),
    #[error("invalid protocol {0:?}: use tcp, udp or sctp")]
    Protocol(String),
    #[error("invalid publish mode {0:?}: use mode=ingress or mode=host")]
    Mode(String),
    #[error(
        "invalid field {0:?}: use published=P, target=T, protocol=tcp|udp|sctp or mode=ingress|host"
    )]
    Field(String),
    #[error("missing target port: add target=T, e.g. published=8080,target=80")]
    MissingTarget,
    #[error(
        "host IPs are not supported in {0:?}: services publish on every address; use PUBLISHED:TARGET"
    )]
    HostIp(String),
    #[error(
        "port ranges {0:?} and {1:?} have different sizes: give ranges of equal length, e.g. 8080-8081:80-81"
    )]
    RangeMismatch(String, String),
}

/// The ports one `--publish` flag stands for (a range expands to several).
#[derive(Clone, Debug, PartialEq)]
pub struct PublishSpec(pub Vec<EndpointPortConfig>);

impl std::str::FromStr for PublishSpec {
    type Err = PublishError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s).map(PublishSpec)
    }
}

pub fn parse(spec: &str) -> Result<Vec<EndpointPortConfig>, PublishError> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(PublishError::Empty);
    }
    if spec.contains('=') {
        parse_long(spec).map(|p| vec![p])
    } else {
        parse_short(spec)
    }
}

fn config(
    published: Option<u16>,
    target: u16,
    protocol: Protocol,
    mode: PublishMode,
) -> EndpointPortConfig {
    EndpointPortConfig {
        protocol: Some(protocol),
        target_port: Some(i64::from(target)),
        // Zero asks the manager to pick a port from its dynamic range, as docker does.
        published_port: Some(i64::from(published.unwrap_or(0))),
        publish_mode: Some(mode),
        ..Default::default()
    }
}

fn parse_long(spec: &str) -> Result<EndpointPortConfig, PublishError> {
    let mut published = None;
    let mut target = None;
    let mut protocol = Protocol::TCP;
    let mut mode = PublishMode::INGRESS;
    for field in spec.split(',') {
        // docker lower-cases the whole field, keys and values alike.
        let field = field.trim().to_ascii_lowercase();
        let Some((key, value)) = field.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(PublishError::Field(field));
        };
        match key {
            "published" => published = Some(port(value)?),
            "target" => target = Some(port(value)?),
            "protocol" => protocol = parse_protocol(value)?,
            "mode" => {
                mode = match value {
                    "ingress" => PublishMode::INGRESS,
                    "host" => PublishMode::HOST,
                    other => return Err(PublishError::Mode(other.into())),
                }
            }
            _ => return Err(PublishError::Field(field.clone())),
        }
    }
    let target = target.ok_or(PublishError::MissingTarget)?;
    Ok(config(published, target, protocol, mode))
}

fn parse_short(spec: &str) -> Result<Vec<EndpointPortConfig>, PublishError> {
    let (ports, protocol) = match spec.split_once('/') {
        Some((ports, proto)) => (ports, parse_protocol(proto)?),
        None => (spec, Protocol::TCP),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (published, target) = match parts.as_slice() {
        [target] => (None, *target),
        [published, target] => (Some(*published).filter(|p| !p.is_empty()), *target),
        _ => return Err(PublishError::HostIp(spec.into())),
    };
    let (t_start, t_end) = range(target)?;
    let targets = t_start..=t_end;
    match published {
        None => Ok(targets
            .map(|t| config(None, t, protocol, PublishMode::INGRESS))
            .collect()),
        Some(published) => {
            let (p_start, p_end) = range(published)?;
            let (p_len, t_len) = (p_end - p_start, t_end - t_start);
            if p_len == t_len {
                Ok((p_start..=p_end)
                    .zip(targets)
                    .map(|(p, t)| config(Some(p), t, protocol, PublishMode::INGRESS))
                    .collect())
            } else if t_len == 0 {
                // Several published ports onto one target (`8080-8081:80`) is allowed.
                Ok((p_start..=p_end)
                    .map(|p| config(Some(p), t_start, protocol, PublishMode::INGRESS))
                    .collect())
            } else {
                Err(PublishError::RangeMismatch(published.into(), target.into()))
            }
        }
    }
}

fn range(s: &str) -> Result<(u16, u16), PublishError> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if b < a {
                return Err(PublishError::Port(s.into()));
            }
            Ok((a, b))
        }
        None => port(s).map(|p| (p, p)),
    }
}

fn port(s: &str) -> Result<u16, PublishError> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(PublishError::Port(s.into())),
    }
}

fn parse_protocol(s: &str) -> Result<Protocol, PublishError> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::TCP),
        "udp" => Ok(Protocol::UDP),
        "sctp" => Ok(Protocol::SCTP),
        _ => Err(PublishError::Protocol(s.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(published: i64, target: i64, proto: Protocol, mode: PublishMode) -> EndpointPortConfig {
        EndpointPortConfig {
            protocol: Some(proto),
            target_port: Some(target),
            published_port: Some(published),
            publish_mode: Some(mode),
            ..Default::default()
        }
    }

    #[test]
    fn short_syntax() {
        let ing = PublishMode::INGRESS;
        assert_eq!(
            parse("9200:9200"),
            Ok(vec![one(9200, 9200, Protocol::TCP, ing)])
        );
        assert_eq!(
            parse("8080:80/udp"),
            Ok(vec![one(8080, 80, Protocol::UDP, ing)])
        );
        assert_eq!(parse("80"), Ok(vec![one(0, 80, Protocol::TCP, ing)]));
        assert_eq!(parse(":80/TCP"), Ok(vec![one(0, 80, Protocol::TCP, ing)]));
        assert_eq!(
            parse("8080-8081:80-81"),
            Ok(vec![
                one(8080, 80, Protocol::TCP, ing),
                one(8081, 81, Protocol::TCP, ing)
            ])
        );
        assert_eq!(
            parse("8080-8081:80"),
            Ok(vec![
                one(8080, 80, Protocol::TCP, ing),
                one(8081, 80, Protocol::TCP, ing)
            ])
        );
    }

    #[test]
    fn long_syntax() {
        assert_eq!(
            parse("published=8080,target=80"),
            Ok(vec![one(8080, 80, Protocol::TCP, PublishMode::INGRESS)])
        );
        assert_eq!(
            parse("target=53,published=53,protocol=udp,mode=host"),
            Ok(vec![one(53, 53, Protocol::UDP, PublishMode::HOST)])
        );
        assert_eq!(
            parse("target=80"),
            Ok(vec![one(0, 80, Protocol::TCP, PublishMode::INGRESS)])
        );
    }

    #[test]
    fn bad_specs_say_what_to_do() {
        assert_eq!(parse(""), Err(PublishError::Empty));
        assert_eq!(parse("abc"), Err(PublishError::Port("abc".into())));
        assert_eq!(parse("0:80"), Err(PublishError::Port("0".into())));
        assert_eq!(parse("70000:80"), Err(PublishError::Port("70000".into())));
        assert_eq!(parse("80/icmp"), Err(PublishError::Protocol("icmp".into())));
        assert_eq!(
            parse("127.0.0.1:80:80"),
            Err(PublishError::HostIp("127.0.0.1:80:80".into()))
        );
        assert_eq!(
            parse("8080-8082:80-81"),
            Err(PublishError::RangeMismatch(
                "8080-8082".into(),
                "80-81".into()
            ))
        );
        assert_eq!(parse("published=80"), Err(PublishError::MissingTarget));
        assert_eq!(
            parse("target=80,mode=vip"),
            Err(PublishError::Mode("vip".into()))
        );
        assert_eq!(
            parse("target=80,proto=tcp"),
            Err(PublishError::Field("proto=tcp".into()))
        );
        assert_eq!(parse("target=x"), Err(PublishError::Port("x".into())));
        let msg = parse("abc").map(|_| ()).unwrap_err().to_string();
        assert!(msg.contains("8080:80"), "{msg}");
    }
}
