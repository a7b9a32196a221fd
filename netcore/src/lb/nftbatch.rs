//! One nftables transaction: typed `nftables` schema objects collected in order and fed to
//! `nft -j -f -` running inside the target namespace. nft applies the whole document as one
//! kernel transaction, so a batch either lands completely or not at all.

use std::borrow::Cow;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Verdict};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, NfObject, Rule, Set, SetType, SetTypeValue,
    Table,
};
use nftables::stmt::{JumpTarget, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use nix::sched::CloneFlags;
use serde_json::Value;

use super::{LbError, Protocol};
use crate::netns::{NetNs, enter_raw};

/// Base-chain priorities (nft's `dstnat`, `srcnat`, `mangle`); numbers because nft 1.0.6 does
/// not accept the `dstnat` keyword on the output hook.
pub const PRIO_DSTNAT: i32 = -100;
pub const PRIO_SRCNAT: i32 = 100;
pub const PRIO_MANGLE: i32 = -150;

/// Commands for one table, in the order the kernel must see them.
pub struct NftBatch {
    table: String,
    cmds: Vec<Value>,
}

impl NftBatch {
    pub fn new(table: &str) -> Self {
        NftBatch {
            table: table.to_string(),
            cmds: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.cmds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    fn push(&mut self, cmd: NfCmd<'_>) {
        // Serialising a schema value into a Value cannot fail: it has no non-string map keys.
        if let Ok(v) = serde_json::to_value(NfObject::CmdObject(cmd)) {
            self.cmds.push(v);
        }
    }

    fn table_obj(&self) -> Table<'static> {
        Table {
            family: NfFamily::IP,
            name: Cow::Owned(self.table.clone()),
            handle: None,
        }
    }

    /// Creates the table empty, wiping whatever an earlier process left behind: `add` makes
    /// the `delete` safe when it does not exist.
    pub fn recreate_table(&mut self) {
        self.push(NfCmd::Add(NfListObject::Table(self.table_obj())));
        self.push(NfCmd::Delete(NfListObject::Table(self.table_obj())));
        self.push(NfCmd::Add(NfListObject::Table(self.table_obj())));
    }

    /// Deletes the table if it exists.
    pub fn delete_table(&mut self) {
        self.push(NfCmd::Add(NfListObject::Table(self.table_obj())));
        self.push(NfCmd::Delete(NfListObject::Table(self.table_obj())));
    }

    fn chain_obj(&self, name: &str) -> Chain<'static> {
        Chain {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.clone()),
            name: Cow::Owned(name.to_string()),
            ..Chain::default()
        }
    }

    /// A NAT base chain at iptables' priority for its hook: destination NAT before routing
    /// (prerouting, output), source NAT after it (postrouting, input).
    pub fn add_nat_chain(&mut self, name: &str, hook: NfHook) {
        let prio = match hook {
            NfHook::Prerouting | NfHook::Output => PRIO_DSTNAT,
            _ => PRIO_SRCNAT,
        };
        self.add_base_chain(name, NfChainType::NAT, hook, prio);
    }

    pub fn add_base_chain(&mut self, name: &str, kind: NfChainType, hook: NfHook, prio: i32) {
        let chain = Chain {
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..self.chain_obj(name)
        };
        self.push(NfCmd::Add(NfListObject::Chain(chain)));
    }

    pub fn add_chain(&mut self, name: &str) {
        let chain = self.chain_obj(name);
        self.push(NfCmd::Add(NfListObject::Chain(chain)));
    }

    pub fn flush_chain(&mut self, name: &str) {
        let chain = self.chain_obj(name);
        self.push(NfCmd::Flush(FlushObject::Chain(chain)));
    }

    pub fn delete_chain(&mut self, name: &str) {
        let chain = self.chain_obj(name);
        self.push(NfCmd::Delete(NfListObject::Chain(chain)));
    }

    pub fn add_rule(&mut self, chain: &str, expr: Vec<Statement<'static>>) {
        let rule = Rule {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.clone()),
            chain: Cow::Owned(chain.to_string()),
            expr: Cow::Owned(expr),
            handle: None,
            index: None,
            comment: None,
        };
        self.push(NfCmd::Add(NfListObject::Rule(rule)));
    }

    pub fn add_set(&mut self, name: &str, ty: SetTypeValue<'static>) {
        let set = Set {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.clone()),
            name: Cow::Owned(name.to_string()),
            set_type: ty,
            ..Set::default()
        };
        self.push(NfCmd::Add(NfListObject::Set(Box::new(set))));
    }

    pub fn add_map(&mut self, name: &str, key: SetTypeValue<'static>, value: SetType) {
        let map = nftables::schema::Map {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.clone()),
            name: Cow::Owned(name.to_string()),
            set_type: key,
            map: SetTypeValue::Single(value),
            ..nftables::schema::Map::default()
        };
        self.push(NfCmd::Add(NfListObject::Map(Box::new(map))));
    }

    /// A map whose values are verdicts (`goto chain`). The typed schema has no `verdict` data
    /// type, so this one declaration is written as JSON with the same shape nft lists.
    pub fn add_verdict_map(&mut self, name: &str, key: SetTypeValue<'static>) {
        self.cmds.push(serde_json::json!({"add": {"map": {
            "family": "ip", "table": self.table, "name": name,
            "type": key, "map": "verdict",
        }}}));
    }

    fn element(&self, set: &str, elem: Expression<'static>) -> NfListObject<'static> {
        NfListObject::Element(Element {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.clone()),
            name: Cow::Owned(set.to_string()),
            elem: Cow::Owned(vec![elem]),
        })
    }

    pub fn add_element(&mut self, set: &str, elem: Expression<'static>) {
        let obj = self.element(set, elem);
        self.push(NfCmd::Add(obj));
    }

    pub fn delete_element(&mut self, set: &str, elem: Expression<'static>) {
        let obj = self.element(set, elem);
        self.push(NfCmd::Delete(obj));
    }

    pub fn to_json(&self) -> Result<String, LbError> {
        Ok(serde_json::to_string(
            &serde_json::json!({ "nftables": self.cmds }),
        )?)
    }

    /// Sends the batch as one transaction in `ns`. An empty batch sends nothing.
    pub fn run(&self, ns: &NetNs) -> Result<(), LbError> {
        if self.cmds.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        apply_nft(ns, &self.to_json()?)?;
        tracing::debug!(ns = ns.name(), table = %self.table, commands = self.cmds.len(), took = ?started.elapsed(), "nft batch");
        Ok(())
    }
}

/// As [`apply_nft`], for a namespace that is written once: no context is kept for it (one
/// per task would cost a descriptor and a ruleset cache each).
pub fn apply_nft_once(ns: &NetNs, commands: &str) -> Result<(), LbError> {
    match super::libnft::Context::open_in(ns) {
        Some(mut ctx) => run_in_context(&mut ctx, ns, commands),
        None => spawn_nft(ns, commands),
    }
}

/// Applies `commands` (a JSON batch, or nft syntax as `nft -f` reads it) in `ns` as one
/// transaction: in-process through libnftables when it is installed, else with the binary.
pub fn apply_nft(ns: &NetNs, commands: &str) -> Result<(), LbError> {
    let mut slot = ns.nft_slot().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(ctx) = slot.get_or_open(ns) {
        return run_in_context(ctx, ns, commands);
    }
    drop(slot);
    spawn_nft(ns, commands)
}

fn run_in_context(
    ctx: &mut super::libnft::Context,
    ns: &NetNs,
    commands: &str,
) -> Result<(), LbError> {
    ctx.run(commands).map_err(|stderr| LbError::NftFailed {
        ns: ns.name().to_string(),
        stderr,
    })
}

fn spawn_nft(ns: &NetNs, commands: &str) -> Result<(), LbError> {
    let args: &[&str] = if commands.starts_with('{') {
        &["-j", "-f", "-"]
    } else {
        &["-f", "-"]
    };
    run_nft(ns, args, Some(commands.as_bytes())).map(|_| ())
}

/// Runs `nft ARGS` inside `ns` and returns its stdout. The child enters the namespace between
/// fork and exec, so no thread of ours ever changes namespace for it.
pub fn run_nft(ns: &NetNs, args: &[&str], stdin: Option<&[u8]>) -> Result<String, LbError> {
    let spawn_err = |source| LbError::NftSpawn {
        ns: ns.name().to_string(),
        source,
    };
    let fd = ns.raw_fd();
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: enter_raw only calls setns(2), which is async-signal-safe; `ns` keeps the fd open
    // until the child has exec'd because we wait for it below.
    unsafe {
        cmd.pre_exec(move || enter_raw(fd, CloneFlags::CLONE_NEWNET));
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(LbError::NftFailed {
            ns: ns.name().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// Expression and statement shorthands shared by the drivers and the ingress table.

pub fn s(v: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(v.to_string()))
}

pub fn ip(a: Ipv4Addr) -> Expression<'static> {
    s(&a.to_string())
}

pub fn num(n: u32) -> Expression<'static> {
    Expression::Number(n)
}

pub fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Owned(protocol.to_string()),
            field: Cow::Owned(field.to_string()),
        },
    )))
}

pub fn concat(parts: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(parts))
}

/// `proto . port`, the key of the published-port maps and sets.
pub fn proto_port(proto: Protocol, port: u16) -> Expression<'static> {
    concat(vec![s(proto.as_str()), num(port.into())])
}

/// `meta l4proto . th dport`, the packet side of `proto_port`.
pub fn pkt_proto_port() -> Expression<'static> {
    concat(vec![meta(MetaKey::L4proto), payload("th", "dport")])
}

/// `fib daddr type`: compare with `s("local")` for "addressed to this namespace".
pub fn fib_daddr_type() -> Expression<'static> {
    Expression::Named(nftables::expr::NamedExpression::Fib(nftables::expr::Fib {
        result: nftables::expr::FibResult::Type,
        flags: [nftables::expr::FibFlag::Daddr].into_iter().collect(),
    }))
}

/// `dnat to addr`, keeping the port.
pub fn dnat_to(addr: Ipv4Addr) -> Statement<'static> {
    Statement::DNAT(Some(to_addr(addr)))
}

/// `snat to addr`, keeping the port.
pub fn snat_to(addr: Ipv4Addr) -> Statement<'static> {
    Statement::SNAT(Some(to_addr(addr)))
}

fn to_addr(addr: Ipv4Addr) -> nftables::stmt::NAT<'static> {
    nftables::stmt::NAT {
        addr: Some(ip(addr)),
        family: None,
        port: None,
        flags: None,
    }
}

pub fn set_ref(name: &str) -> Expression<'static> {
    s(&format!("@{name}"))
}

/// A map element `key : value`.
pub fn mapping(key: Expression<'static>, value: Expression<'static>) -> Expression<'static> {
    Expression::List(vec![key, value])
}

pub fn goto(chain: &str) -> Expression<'static> {
    Expression::Verdict(Verdict::Goto(JumpTarget {
        target: Cow::Owned(chain.to_string()),
    }))
}

pub fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

pub fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(left, Operator::EQ, right)
}
