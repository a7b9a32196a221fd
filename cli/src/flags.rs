//! Flag values that are settings of the crates below, parsed once into their types: the
//! testbed's [`Backend`] and the load balancer's driver. A bad value is refused by clap with
//! the accepted ones listed.

use clap::ValueEnum;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use testbed::Backend;

/// `--backend`: one of `offered`, listed in help and errors, parsed into the testbed's own
/// [`Backend`] (a possible value's help, when it has one, shows in long help).
pub fn backend_parser(
    offered: impl IntoIterator<Item = PossibleValue>,
) -> impl TypedValueParser<Value = Backend> {
    PossibleValuesParser::new(offered).try_map(|s| s.parse::<Backend>())
}

/// Every backend the testbed has, by name.
pub fn all_backends() -> impl Iterator<Item = PossibleValue> {
    Backend::ALL
        .into_iter()
        .map(|b| PossibleValue::new(b.as_str()))
}

/// `--lb`: the service load balancer's driver. clap cannot derive its parser on netcore's
/// [`netcore::lb::Driver`] (neither the trait nor the type is this crate's), so this enum
/// stands for it on the command line and maps onto it here only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LbDriver {
    Ipvs,
    Nftables,
}

impl From<LbDriver> for netcore::lb::Driver {
    fn from(d: LbDriver) -> Self {
        match d {
            LbDriver::Ipvs => netcore::lb::Driver::Ipvs,
            LbDriver::Nftables => netcore::lb::Driver::Nftables,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lb_names_are_the_drivers_names() {
        for d in LbDriver::value_variants() {
            let name = d.to_possible_value().map(|v| v.get_name().to_string());
            assert_eq!(name, Some(netcore::lb::Driver::from(*d).to_string()));
        }
    }

    #[test]
    fn backends_parse_into_the_testbeds_type() {
        let cmd = clap::Command::new("t").arg(
            clap::Arg::new("backend")
                .long("backend")
                .value_parser(backend_parser(all_backends())),
        );
        for b in Backend::ALL {
            let m = cmd
                .clone()
                .try_get_matches_from(["t", "--backend", b.as_str()])
                .expect("a listed backend");
            assert_eq!(m.get_one::<Backend>("backend"), Some(&b));
        }
        assert!(
            cmd.try_get_matches_from(["t", "--backend", "docker"])
                .is_err()
        );
    }
}
