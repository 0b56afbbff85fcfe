//! No crate of the workspace has modules that import each other in a cycle.
//!
//! Within each crate, every `use crate::…` and `use super::…`, and every
//! inline `crate::…` or `super::…` path, is an edge from the module it is written in to the module
//! it names. An edge between a module and its own ancestor is structure, not
//! a dependency; any other edge is lifted to the two siblings under the pair's
//! common ancestor (`scheduler::queue → metrics` is `scheduler → metrics`).
//! The siblings of every level must form an acyclic graph. Test modules
//! (`#[cfg(test)] mod …` and everything after it in a file, or the file such a
//! declaration names) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

const CRATES: &[&str] = &["core", "proto", "engine", "coordinator", "client", "worker"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `lib.rs` / `main.rs` the root.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Module = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The source without comments, string literals and test modules.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod ").or_else(|| text.find("#[cfg(test)]\npub mod ")) {
        Some(at) => &text[..at],
        None => text,
    };
    let (mut out, mut chars) = (String::with_capacity(text.len()), text.chars().peekable());
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if !escaped && c == '"' {
                        break;
                    }
                    escaped = !escaped && c == '\\';
                }
                out.push_str("\"\"");
            }
            // a char literal such as '"' or '{' (lifetimes pass through)
            '\'' if chars.clone().nth(1) == Some('\'') => {
                out.push_str("' '");
                chars.next();
                chars.next();
            }
            c => out.push(c),
        }
    }
    out
}

/// Expands a use tree (`a::{b, c::d}`) into its paths.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = format!("{prefix}{}", &tree[..open]);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &head, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &head, out);
    } else if !tree.is_empty() {
        out.push(format!("{prefix}{}", tree.split(" as ").next().unwrap_or(tree).trim()));
    }
}

/// Every module path the code names, resolved against `here`.
fn references(code: &str, here: &Module) -> Vec<Module> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        rest = &rest[at + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest.find(';').unwrap_or(rest.len());
        expand(&rest[..end], "", &mut paths);
    }
    for root in ["crate::", "super::"] {
        for (at, _) in code.match_indices(root) {
            if code[..at].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let tail: String = code[at..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            paths.push(tail);
        }
    }
    paths
        .into_iter()
        .filter_map(|p| {
            let segs: Vec<&str> = p.split("::").map(str::trim).filter(|s| !s.is_empty()).collect();
            let (base, skip): (Module, usize) = match segs.first().copied()? {
                "crate" => (Vec::new(), 1),
                "self" => (here.clone(), 1),
                "super" => {
                    // in `a/b.rs` (module a::b) super is `a`; so too in `a/b/mod.rs`
                    let mut base = here.clone();
                    let mut n = 0;
                    while segs.get(n) == Some(&"super") {
                        base.pop();
                        n += 1;
                    }
                    (base, n)
                }
                _ => return None,
            };
            let mut m = base;
            m.extend(segs[skip..].iter().map(|s| s.to_string()));
            Some(m)
        })
        .collect()
}

fn find_cycle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(node: &Module, graph: &BTreeMap<Module, BTreeSet<Module>>, state: &mut BTreeMap<Module, u8>, stack: &mut Vec<Module>) -> Option<Vec<Module>> {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|m| m == next).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(node, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// The sibling-level import graph of the crate whose sources are in `src`.
fn graph_of(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let has_lib = src.join("lib.rs").exists();
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(src, f)).collect();
    // modules declared under #[cfg(test)] in their own file (`mod tests;`) are test code too
    let mut test_modules: Vec<Module> = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (at, _) in text.match_indices("#[cfg(test)]") {
            let rest = text[at + "#[cfg(test)]".len()..].trim_start();
            let rest = rest.strip_prefix("pub ").unwrap_or(rest);
            if let Some(name) = rest.strip_prefix("mod ").and_then(|r| r.split(';').next()).filter(|n| n.chars().all(|c| c.is_alphanumeric() || c == '_')) {
                let mut m = module_of(src, file);
                m.push(name.to_string());
                test_modules.push(m);
            }
        }
    }
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for file in &files {
        // a binary beside a library names the library by its crate name
        if has_lib && file == &src.join("main.rs") {
            continue;
        }
        let here = module_of(src, file);
        if test_modules.iter().any(|t| here.starts_with(t)) {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for mut target in references(&code, &here) {
            while !target.is_empty() && !modules.contains(&target) {
                target.pop();
            }
            let common = here.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == here.len() || common == target.len() {
                continue; // the module itself, or an ancestor / descendant
            }
            graph.entry(here[..=common].to_vec()).or_default().insert(target[..=common].to_vec());
        }
    }
    graph
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut cycles = Vec::new();
    for krate in CRATES {
        let graph = graph_of(&root.join(krate).join("src"));
        if let Some(cycle) = find_cycle(&graph) {
            let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
            cycles.push(format!("{krate}: {}", names.join(" → ")));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n  {}", cycles.join("\n  "));
}

#[test]
fn the_check_sees_a_cycle_and_lifts_edges_to_siblings() {
    let dir = tempfile_dir();
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(src.join("a/mod.rs"), "mod inner;\n").unwrap();
    // a::inner → b (lifted to a → b) and b → a::inner (lifted to b → a)
    std::fs::write(src.join("a/inner.rs"), "use crate::b::Thing; // crate::c in a comment is no edge\n").unwrap();
    std::fs::write(src.join("b.rs"), "use crate::{a::inner::X, b};\nconst S: &str = \"crate::zz\";\n").unwrap();
    let graph = graph_of(&src);
    let cycle = find_cycle(&graph).expect("a → b → a is a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 3, "{cycle:?}");
    // without the back edge there is none; test code may import anything
    std::fs::write(src.join("b.rs"), "pub struct Thing;\n#[cfg(test)]\nmod tests {\n    use crate::a::inner::X;\n}\n#[cfg(test)]\nmod more;\n").unwrap();
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("b/more.rs"), "use crate::a::inner::X;\n").unwrap();
    assert_eq!(find_cycle(&graph_of(&src)), None);
    // an inline super:: path counts like a use
    std::fs::write(src.join("b.rs"), "pub struct Thing;\nfn f() { super::a::inner::g() }\n").unwrap();
    assert!(find_cycle(&graph_of(&src)).is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("import-cycles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
