//! Image references as docker reads them: which built-in image a reference names, whatever its
//! tag or registry spelling, and the form docker displays.

pub const BUILTIN: &[&str] = &["drupal", "postgres", "elasticsearch", "whoami"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    Drupal,
    Postgres,
    Elasticsearch,
    Whoami,
}

impl Builtin {
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Drupal => "drupal",
            Builtin::Postgres => "postgres",
            Builtin::Elasticsearch => "elasticsearch",
            Builtin::Whoami => "whoami",
        }
    }

    /// The port the real image listens on.
    pub fn port(self) -> u16 {
        match self {
            Builtin::Drupal | Builtin::Whoami => 80,
            Builtin::Postgres => 5432,
            Builtin::Elasticsearch => 9200,
        }
    }
}

/// An image reference split the way docker reads it.
struct Reference<'a> {
    /// None for Docker Hub.
    registry: Option<&'a str>,
    /// Without `library/` for Docker Hub official images.
    path: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

fn parse_reference(image: &str) -> Reference<'_> {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    // A colon after the last slash is a tag; before it, a registry port.
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (rest, tag) = match rest[slash..].find(':') {
        Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
        None => (rest, None),
    };
    let (registry, path) = match rest.split_once('/') {
        Some((first, path))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), path)
        }
        _ => (None, rest),
    };
    let registry = registry
        .filter(|r| !matches!(*r, "docker.io" | "index.docker.io" | "registry-1.docker.io"));
    let path = match registry {
        None => path.strip_prefix("library/").unwrap_or(path),
        Some(_) => path,
    };
    Reference {
        registry,
        path,
        tag,
        digest,
    }
}

/// The built-in behind an image reference, whatever its tag (`elasticsearch:2`,
/// `docker.io/library/drupal:9`, `traefik/whoami`).
pub fn resolve(image: &str) -> Option<Builtin> {
    let r = parse_reference(image.trim());
    if r.registry.is_some() {
        return None;
    }
    match r.path {
        "drupal" => Some(Builtin::Drupal),
        "postgres" => Some(Builtin::Postgres),
        "elasticsearch" => Some(Builtin::Elasticsearch),
        "whoami" | "traefik/whoami" | "containous/whoami" => Some(Builtin::Whoami),
        _ => None,
    }
}

/// Docker's display form (`service ls`, `service ps`): Hub prefixes dropped, `:latest` added
/// when no tag was given, a digest dropped when there is a tag.
pub fn canonical(image: &str) -> String {
    let r = parse_reference(image.trim());
    let name = match r.registry {
        Some(reg) => format!("{reg}/{}", r.path),
        None => r.path.to_string(),
    };
    match (r.tag, r.digest) {
        (Some(tag), _) => format!("{name}:{tag}"),
        (None, Some(digest)) => format!("{name}@{digest}"),
        (None, None) => format!("{name}:latest"),
    }
}

/// What `swarmkit __image` says of an image it has no server for: the agent runs only
/// built-in images that way; every other image is pulled from its registry and run as itself.
pub fn unknown_image_error(image: &str) -> String {
    format!(
        "image {} is not built in (built-in images: {}): other images run from their registry",
        canonical(image),
        BUILTIN.join(", ")
    )
}
