//! The names users give clusters, services and networks, checked by one validator. The rules
//! differ only where they must: a cluster's name becomes part of namespace, nft table and file
//! names (see `paths`), so it is short, lower-case and without the '.' that ends a cluster's
//! prefix; services and networks follow docker's rules for them.

/// What a name is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Named {
    Cluster,
    Service,
    Network,
    /// A node's hostname, as its agent registers it.
    Node,
    /// A secret's or a config's name (docker's rule: it may be a file name, stack-prefixed).
    Payload,
}

/// A name is 1..=`max_len` ASCII letters, digits and `punct`, starting with a letter or digit.
struct Rules {
    max_len: usize,
    upper_case: bool,
    punct: &'static str,
    /// The rules as the refusal states them.
    hint: &'static str,
}

impl Named {
    fn noun(self) -> &'static str {
        match self {
            Named::Cluster => "cluster",
            Named::Service => "service",
            Named::Network => "network",
            Named::Node => "node",
            Named::Payload => "secret or config",
        }
    }

    fn rules(self) -> Rules {
        match self {
            Named::Cluster => Rules {
                max_len: 24,
                upper_case: false,
                punct: "-_",
                hint: "use 1-24 characters of a-z, 0-9, '-' or '_', starting with a letter or digit",
            },
            Named::Service => Rules {
                max_len: 63,
                upper_case: true,
                punct: "-_",
                hint: "use up to 63 letters, digits, '-' or '_', starting with a letter or digit",
            },
            Named::Network => Rules {
                max_len: 64,
                upper_case: true,
                punct: "_.-",
                hint: "use letters, digits, '_', '.' or '-', starting with a letter or digit",
            },
            // A hostname (RFC 1123, dotted names allowed): it is shown in tables, named in
            // files and logs, and matched to find a node that registers again.
            Named::Node => Rules {
                max_len: 253,
                upper_case: true,
                punct: "-.",
                hint: "a hostname is up to 253 letters, digits, '-' or '.', starting with a letter or digit; set the node's hostname to one",
            },
            Named::Payload => Rules {
                max_len: 64,
                upper_case: true,
                punct: "_.-",
                hint: "use up to 64 letters, digits, '_', '.' or '-', starting with a letter or digit",
            },
        }
    }
}

/// Whether `name` may name a `what`; the refusal names the rules.
pub fn validate(what: Named, name: &str) -> Result<(), String> {
    let r = what.rules();
    let allowed = |c: char| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || (r.upper_case && c.is_ascii_uppercase())
            || r.punct.contains(c)
    };
    let ok = !name.is_empty()
        && name.len() <= r.max_len
        && name.chars().all(allowed)
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("invalid {} name {name:?}: {}", what.noun(), r.hint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_keeps_its_own_rules() {
        for (what, name, ok) in [
            (Named::Cluster, "demo-1_a", true),
            (Named::Cluster, "Demo", false),
            (Named::Cluster, "a.b", false),
            (Named::Cluster, "-a", false),
            (Named::Cluster, &"a".repeat(25), false),
            (Named::Service, "Web_1-a", true),
            (Named::Service, "web.1", false),
            (Named::Service, "_web", false),
            (Named::Service, &"a".repeat(63), true),
            (Named::Service, &"a".repeat(64), false),
            (Named::Network, "Back.end_1-a", true),
            (Named::Network, ".net", false),
            (Named::Network, &"a".repeat(64), true),
            (Named::Network, &"a".repeat(65), false),
            (Named::Network, "", false),
            (Named::Node, "node1", true),
            (Named::Node, "host-2.lab.example", true),
            (Named::Node, "a/b", false),
            (Named::Node, "../x", false),
            (Named::Node, "node 1", false),
            (Named::Node, "nodé", false),
            (Named::Node, "n\n", false),
            (Named::Node, "", false),
            (Named::Node, &"a".repeat(254), false),
        ] {
            assert_eq!(validate(what, name).is_ok(), ok, "{what:?} {name:?}");
        }
    }

    #[test]
    fn a_refusal_names_what_and_the_rules() {
        assert_eq!(
            validate(Named::Service, "web.1").unwrap_err(),
            "invalid service name \"web.1\": use up to 63 letters, digits, '-' or '_', starting with a letter or digit"
        );
        assert_eq!(
            validate(Named::Cluster, "A").unwrap_err(),
            "invalid cluster name \"A\": use 1-24 characters of a-z, 0-9, '-' or '_', starting with a letter or digit"
        );
        assert_eq!(
            validate(Named::Network, "-n").unwrap_err(),
            "invalid network name \"-n\": use letters, digits, '_', '.' or '-', starting with a letter or digit"
        );
    }
}
