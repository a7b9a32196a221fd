#!/usr/bin/env python3
"""List `crate::X` (and super::/self::) imports per module of one crate and find cycles.

usage: modcycles.py SRC_DIR [--depth N]
Edges are made from every path in `use` trees and every `crate::`/`super::` path in code,
resolved to the longest known module prefix. A `pub use` of a module's own descendant is a
re-export (the module's public face, like its `pub mod` lines), not a dependency, and is left
out; anything else a module names counts. With --depth N, modules are cut to N segments
(0 = the crate root alone) before cycles are looked for.
"""
import os, re, sys
from collections import defaultdict

src = sys.argv[1]
depth = int(sys.argv[sys.argv.index('--depth') + 1]) if '--depth' in sys.argv else 99

def modpath(rel):
    parts = rel[:-3].split('/')
    if parts[-1] in ('mod', 'lib', 'main'):
        parts = parts[:-1]
    return tuple(parts)

files = {}
for root, _, names in os.walk(src):
    for n in names:
        if n.endswith('.rs'):
            p = os.path.join(root, n)
            files[modpath(os.path.relpath(p, src))] = open(p).read()
mods = set(files)

def strip(text):
    text = re.sub(r'//[^\n]*', '', text)
    text = re.sub(r'/\*.*?\*/', '', text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    # test modules do not count: they are not part of the dependency structure
    out, i = [], 0
    for m in re.finditer(r'#\[cfg\(test\)\]\s*mod\s+\w+\s*\{', text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        d, j = 1, m.end()
        while d and j < len(text):
            d += {'{': 1, '}': -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return ''.join(out)

def expand(tree):
    """'a::{b, c::{d, e}}' -> ['a::b', 'a::c::d', 'a::c::e']"""
    tree = tree.strip()
    m = re.match(r'^(.*?)\{(.*)\}$', tree, re.S)
    if not m:
        return [re.sub(r'\s+as\s+\w+$', '', tree)]
    prefix, inner = m.group(1), m.group(2)
    items, d, cur = [], 0, ''
    for ch in inner:
        if ch == ',' and d == 0:
            items.append(cur); cur = ''
            continue
        d += {'{': 1, '}': -1}.get(ch, 0)
        cur += ch
    items.append(cur)
    return [p for it in items if it.strip() for p in expand(prefix + it.strip())]

def resolve(here, path):
    segs = [s for s in path.split('::') if s]
    if not segs:
        return None
    if segs[0] in ('crate', '$crate'):
        base, segs = (), segs[1:]
    elif segs[0] == 'super':
        base = here
        while segs and segs[0] == 'super':
            base, segs = base[:-1], segs[1:]
    elif segs[0] == 'self':
        base, segs = here, segs[1:]
    elif here + (segs[0],) in mods:
        # a child module, named bare (2018 paths)
        base = here
    else:
        return None
    best = base
    for k in range(1, len(segs) + 1):
        if base + tuple(segs[:k]) in mods:
            best = base + tuple(segs[:k])
    return best

edges = defaultdict(set)
for here, text in files.items():
    t = strip(text)
    paths = []
    for m in re.finditer(r'(\bpub(?:\([\w:]+\))?\s+)?\buse\s+([^;]+);', t):
        for p in expand(m.group(2)):
            to = resolve(here, p)
            if m.group(1) and to is not None and len(to) > len(here) and to[:len(here)] == here:
                continue
            paths.append(p)
    t = re.sub(r'\buse\s+[^;]+;', '', t)
    paths += re.findall(r'(?<![\w:])((?:\$?crate|super|self)(?:::\w+)+)', t)
    children = [m[-1] for m in mods if m[:-1] == here and len(m) == len(here) + 1]
    for c in children:
        paths += re.findall(r'(?<![\w:$])(%s(?:::\w+)+)' % re.escape(c), t)
    for p in paths:
        to = resolve(here, p)
        if to is None:
            continue
        a, b = here[:depth], to[:depth]
        if a != b and not (b == a[:len(b)] and False):
            edges[a].add(b)

name = lambda m: 'crate' if not m else '::'.join(m)
for a in sorted(edges, key=name):
    print(f'{name(a):28} -> {", ".join(sorted(name(b) for b in edges[a]))}')

# Tarjan's SCC
idx, low, st, on, sccs, n = {}, {}, [], set(), [], [0]
def visit(v):
    idx[v] = low[v] = n[0]; n[0] += 1; st.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in idx:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        c = []
        while True:
            w = st.pop(); on.discard(w); c.append(w)
            if w == v: break
        if len(c) > 1:
            sccs.append(c)
nodes = set(edges) | {b for bs in edges.values() for b in bs}
for v in sorted(nodes, key=name):
    if v not in idx:
        visit(v)
print()
if not sccs:
    print('no cycles')
for c in sccs:
    print('cycle among:', ', '.join(sorted(name(m) for m in c)))
    cs = set(c)
    for a in sorted(c, key=name):
        for b in sorted(edges[a] & cs, key=name):
            print(f'    {name(a)} -> {name(b)}')
