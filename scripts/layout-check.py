#!/usr/bin/env python3
"""The layout stays readable (called by scripts/test.sh):

- no Rust source file under a crate's src/ has more than LIMIT (700) lines
  of code (blank and comment-only lines not counted);
- no import cycle between the top-level modules of a crate (`crate::x` and
  `super::x` references of the files of module a to module b, and back).

Usage: layout-check.py ROOT [LIMIT]. Exits 1, listing what it found."""
import os, re, sys
root = sys.argv[1]; limit = int(sys.argv[2]) if len(sys.argv) > 2 else 700
crates = []
for dp, dn, fn in os.walk(root):
    if '/target' in dp or '/.git' in dp: continue
    if 'Cargo.toml' in fn and os.path.isdir(os.path.join(dp, 'src')):
        crates.append(dp)
bad = False
for c in sorted(crates):
    src = os.path.join(c, 'src')
    files = []
    for dp, dn, fn in os.walk(src):
        for f in fn:
            if f.endswith('.rs'): files.append(os.path.join(dp, f))
    def module_of(path):
        rel = os.path.relpath(path, src)
        parts = rel[:-3].split('/')
        if parts[0] in ('lib', 'main'): return None
        return parts[0]
    graph = {}
    for f in files:
        text = open(f).read()
        code = '\n'.join(l for l in text.split('\n') if not l.strip().startswith('//'))
        n = sum(1 for l in text.split('\n') if l.strip() and not l.strip().startswith('//'))
        if n > limit:
            print(f"OVER {limit}: {f}: {n} lines of code"); bad = True
        m = module_of(f)
        if m is None: continue
        rel = os.path.relpath(f, src)[:-3].split('/')
        # path of this file's module: e.g. worker/read -> [worker, read]; worker/mod -> [worker]
        mpath = rel[:-1] if rel[-1] == 'mod' else rel
        refs = set()
        for r in re.findall(r'\bcrate::([a-z_][a-z0-9_]*)', code):
            refs.add(r)
        for sup in re.findall(r'\b((?:super::)+)([a-z_][a-z0-9_]*)', code):
            depth = sup[0].count('super::')
            base = mpath[:-depth] if depth <= len(mpath) else []
            target = (base + [sup[1]])
            refs.add(target[0] if base else sup[1])
        for r in refs:
            if r != m and os.path.exists(os.path.join(src, r + '.rs')) or os.path.isdir(os.path.join(src, r)):
                if r != m: graph.setdefault(m, set()).add(r)
    # find cycles
    seen, stack = set(), []
    def dfs(u, path):
        for v in graph.get(u, ()):
            if v in path:
                cyc = path[path.index(v):] + [v]
                print(f"CYCLE in {c}: {' -> '.join(cyc)}")
                global bad; bad = True
            elif (u, v) not in seen:
                seen.add((u, v)); dfs(v, path + [v])
    for u in list(graph): dfs(u, [u])
if not bad:
    print(f"layout: {len(crates)} crates, no file over {limit} lines of code, no import cycle between modules")
sys.exit(1 if bad else 0)
