//! One nftables transaction: commands collected in order, which the runner (`NftBatch::run`,
//! in the parent module) sends inside the target namespace as one kernel transaction, so a
//! batch either lands completely or not at all. A command is either a typed [`Op`] (what a
//! load balancer changes once its table exists), which can go as nf_tables messages or as
//! JSON, or a JSON command of the `nftables` schema, which only libnftables or nft can send.

use std::borrow::Cow;

use nftables::expr::Expression;
use nftables::schema::{
    Chain, Element, NfCmd, NfListObject, NfObject, Rule, Set, SetType, SetTypeValue, Table,
};
use nftables::stmt::Statement;
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::Value;

use super::ops::{Data, Key, Op};

/// Base-chain priorities (nft's `dstnat`, `srcnat`, `mangle`); numbers because nft 1.0.6 does
/// not accept the `dstnat` keyword on the output hook.
pub const PRIO_DSTNAT: i32 = -100;
pub const PRIO_SRCNAT: i32 = 100;
pub const PRIO_MANGLE: i32 = -150;

/// Commands for one table, in the order the kernel must see them.
pub struct NftBatch {
    table: String,
    cmds: Vec<Cmd>,
}

enum Cmd {
    Op(Op),
    Json(Value),
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
        if let Some(v) = json_of(cmd) {
            self.cmds.push(Cmd::Json(v));
        }
    }

    fn push_op(&mut self, op: Op) {
        self.cmds.push(Cmd::Op(op));
    }

    /// The batch as typed ops, if every command is one: what can go as nf_tables messages.
    pub fn ops(&self) -> Option<Vec<&Op>> {
        self.cmds
            .iter()
            .map(|c| match c {
                Cmd::Op(op) => Some(op),
                Cmd::Json(_) => None,
            })
            .collect()
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

    /// A regular chain (typed: see [`Op`]).
    pub fn add_chain(&mut self, name: &str) {
        self.push_op(Op::AddChain(name.to_string()));
    }

    pub fn flush_chain(&mut self, name: &str) {
        self.push_op(Op::FlushChain(name.to_string()));
    }

    pub fn delete_chain(&mut self, name: &str) {
        self.push_op(Op::DeleteChain(name.to_string()));
    }

    /// A rule of the shapes [`Op::AddRule`] knows, in a regular chain.
    pub fn add_typed_rule(&mut self, chain: &str, stmts: Vec<super::ops::Stmt>) {
        self.push_op(Op::AddRule {
            chain: chain.to_string(),
            stmts,
        });
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
        self.cmds.push(Cmd::Json(serde_json::json!({"add": {"map": {
            "family": "ip", "table": self.table, "name": name,
            "type": key, "map": "verdict",
        }}})));
    }

    fn element(&self, set: &str, elem: Expression<'static>) -> NfListObject<'static> {
        NfListObject::Element(Element {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.clone()),
            name: Cow::Owned(set.to_string()),
            elem: Cow::Owned(vec![elem]),
        })
    }

    /// An element written as a schema expression (JSON only).
    pub fn add_element_expr(&mut self, set: &str, elem: Expression<'static>) {
        let obj = self.element(set, elem);
        self.push(NfCmd::Add(obj));
    }

    pub fn delete_element_expr(&mut self, set: &str, elem: Expression<'static>) {
        let obj = self.element(set, elem);
        self.push(NfCmd::Delete(obj));
    }

    /// A set element (`data` None) or a map element (typed: see [`Op`]).
    pub fn add_element(&mut self, set: &str, key: Key, data: Option<Data>) {
        self.push_op(Op::AddElement {
            set: set.to_string(),
            key,
            data,
        });
    }

    pub fn delete_element(&mut self, set: &str, key: Key) {
        self.push_op(Op::DeleteElement {
            set: set.to_string(),
            key,
        });
    }

    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        let cmds: Vec<Value> = self
            .cmds
            .iter()
            .filter_map(|c| match c {
                Cmd::Op(op) => json_of(op.to_json(&self.table)),
                Cmd::Json(v) => Some(v.clone()),
            })
            .collect();
        serde_json::to_string(&serde_json::json!({ "nftables": cmds }))
    }

    pub fn table(&self) -> &str {
        &self.table
    }
}

fn json_of(cmd: NfCmd<'_>) -> Option<Value> {
    // Serialising a schema value into a Value cannot fail: it has no non-string map keys.
    serde_json::to_value(NfObject::CmdObject(cmd)).ok()
}
