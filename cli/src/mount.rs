//! `--mount` specs in docker's syntax: comma-separated `key=value` fields, `type=volume|bind|
//! tmpfs`, `source`/`src`, `target`/`destination`/`dst`, `readonly`/`ro` (bare, or `=true|
//! false|1|0`), `volume-driver`, `volume-label=K=V`, `volume-nocopy`, `tmpfs-size`,
//! `tmpfs-mode`. Whether the cluster can honour a mount is the manager's question
//! (`cluster::plan::mounts_of`); this reads the text.

use bollard::models::{
    Mount, MountTmpfsOptions, MountType, MountVolumeOptions, MountVolumeOptionsDriverConfig,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MountError {
    #[error(
        "invalid --mount field {0:?}: use key=value pairs separated by commas, e.g. type=volume,source=data,target=/data"
    )]
    Field(String),
    #[error("invalid --mount type {0:?}: use volume, bind or tmpfs")]
    Type(String),
    #[error("invalid --mount {field} value {value:?}: {why}")]
    Value {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("--mount needs a target: add target=/path/in/container")]
    MissingTarget,
    #[error(
        "--mount field {0:?} is not one swarmkit reads: leave it out (bind-propagation, volume-opt and consistency are not supported)"
    )]
    Unsupported(String),
}

/// One `--mount` flag, as the API takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct MountSpec(pub Mount);

impl std::str::FromStr for MountSpec {
    type Err = MountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s).map(MountSpec)
    }
}

fn boolean(field: &'static str, v: Option<&str>) -> Result<bool, MountError> {
    match v {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(other) => Err(MountError::Value {
            field,
            value: other.to_string(),
            why: "use true or false",
        }),
    }
}

/// docker's sizes: a number of bytes with an optional k, m or g (powers of 1024).
fn size(v: &str) -> Result<i64, MountError> {
    let bad = || MountError::Value {
        field: "tmpfs-size",
        value: v.to_string(),
        why: "give bytes, or a number with k, m or g, e.g. 64m",
    };
    let lower = v.to_ascii_lowercase();
    let lower = lower.trim_end_matches('b');
    let (digits, unit) = match lower.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&lower[..i], Some(c)),
        _ => (lower, None),
    };
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        None => 1,
        Some('k') => 1 << 10,
        Some('m') => 1 << 20,
        Some('g') => 1 << 30,
        Some(_) => return Err(bad()),
    };
    n.checked_mul(scale).filter(|n| *n > 0).ok_or_else(bad)
}

pub fn parse(spec: &str) -> Result<Mount, MountError> {
    let mut m = Mount {
        typ: Some(MountType::VOLUME),
        ..Default::default()
    };
    let mut volume = MountVolumeOptions::default();
    let mut tmpfs = MountTmpfsOptions::default();
    for field in spec.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (field.to_ascii_lowercase(), None),
        };
        let needs = |v: Option<&str>| {
            v.map(str::to_string)
                .ok_or(MountError::Field(field.to_string()))
        };
        match key.as_str() {
            "type" => {
                m.typ = Some(match value {
                    Some("volume") => MountType::VOLUME,
                    Some("bind") => MountType::BIND,
                    Some("tmpfs") => MountType::TMPFS,
                    other => return Err(MountError::Type(other.unwrap_or_default().to_string())),
                })
            }
            "source" | "src" => m.source = Some(needs(value)?),
            "target" | "destination" | "dst" => m.target = Some(needs(value)?),
            "readonly" | "ro" => m.read_only = Some(boolean("readonly", value)?),
            "volume-nocopy" => volume.no_copy = Some(boolean("volume-nocopy", value)?),
            "volume-driver" => {
                volume.driver_config = Some(MountVolumeOptionsDriverConfig {
                    name: Some(needs(value)?),
                    ..Default::default()
                })
            }
            "volume-label" => {
                let kv = needs(value)?;
                let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
                volume
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert(k.to_string(), v.to_string());
            }
            "tmpfs-size" => tmpfs.size_bytes = Some(size(&needs(value)?)?),
            "tmpfs-mode" => {
                let v = needs(value)?;
                tmpfs.mode = Some(i64::from_str_radix(&v, 8).map_err(|_| MountError::Value {
                    field: "tmpfs-mode",
                    value: v.clone(),
                    why: "give octal permission bits, e.g. 1777",
                })?)
            }
            "bind-propagation" | "bind-nonrecursive" | "volume-opt" | "consistency" => {
                return Err(MountError::Unsupported(key));
            }
            _ => return Err(MountError::Field(field.to_string())),
        }
    }
    if m.target.as_deref().is_none_or(str::is_empty) {
        return Err(MountError::MissingTarget);
    }
    if volume != MountVolumeOptions::default() {
        m.volume_options = Some(volume);
    }
    if tmpfs != MountTmpfsOptions::default() {
        m.tmpfs_options = Some(tmpfs);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_spellings_read_as_docker_reads_them() {
        let m = parse("type=volume,src=data,dst=/data,ro,volume-label=team=net").unwrap();
        assert_eq!(m.typ, Some(MountType::VOLUME));
        assert_eq!(m.source.as_deref(), Some("data"));
        assert_eq!(m.target.as_deref(), Some("/data"));
        assert_eq!(m.read_only, Some(true));
        assert_eq!(
            m.volume_options.unwrap().labels.unwrap()["team"],
            "net".to_string()
        );
        let m = parse("type=bind,source=/srv,target=/srv,readonly=false").unwrap();
        assert_eq!((m.typ, m.read_only), (Some(MountType::BIND), Some(false)));
        let m = parse("type=tmpfs,target=/cache,tmpfs-size=64m,tmpfs-mode=1770").unwrap();
        let t = m.tmpfs_options.unwrap();
        assert_eq!((t.size_bytes, t.mode), (Some(64 << 20), Some(0o1770)));
        // The default type is volume, as in docker.
        assert_eq!(parse("target=/x").unwrap().typ, Some(MountType::VOLUME));
    }

    #[test]
    fn bad_specs_name_what_is_wrong() {
        assert_eq!(parse("source=a"), Err(MountError::MissingTarget));
        assert_eq!(
            parse("type=nfs,target=/x"),
            Err(MountError::Type("nfs".into()))
        );
        assert!(matches!(
            parse("type=tmpfs,target=/x,tmpfs-size=lots"),
            Err(MountError::Value {
                field: "tmpfs-size",
                ..
            })
        ));
        assert_eq!(
            parse("target=/x,bind-propagation=shared"),
            Err(MountError::Unsupported("bind-propagation".into()))
        );
        assert_eq!(
            parse("target=/x,color=blue"),
            Err(MountError::Field("color=blue".into()))
        );
    }
}
