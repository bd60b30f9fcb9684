//! Tidy checks: the crate layering, crate docs and test hygiene, as
//! `#[test]`s so that a plain `cargo test` enforces them too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{cargo, root};

fn metadata() -> Value {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// Package name -> names of everything it depends on, transitively, over
/// every dependency kind (normal, dev, build).
fn dependency_closure(meta: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let name_of: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let direct: BTreeMap<&str, Vec<&str>> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["pkg"].as_str().unwrap())
                .collect();
            (n["id"].as_str().unwrap(), deps)
        })
        .collect();
    let mut out = BTreeMap::new();
    for &id in direct.keys() {
        let mut seen = BTreeSet::new();
        let mut todo = vec![id];
        while let Some(cur) = todo.pop() {
            for &d in direct.get(cur).into_iter().flatten() {
                if seen.insert(d) {
                    todo.push(d);
                }
            }
        }
        out.insert(
            name_of[id].to_string(),
            seen.iter().map(|d| name_of[d].to_string()).collect(),
        );
    }
    out
}

#[test]
fn transport_and_session_never_depend_on_each_other() {
    let closure = dependency_closure(&metadata());
    let transport = &closure["shadowcat-transport"];
    let session = &closure["shadowcat-session"];
    assert!(
        !transport.iter().any(|d| d.starts_with("shadowcat-")),
        "shadowcat-transport must depend on no other shadowcat crate, found {transport:?}"
    );
    assert!(
        !session.iter().any(|d| d.starts_with("shadowcat-")),
        "shadowcat-session must depend on no other shadowcat crate, found {session:?}"
    );
}

#[test]
fn proxy_is_the_only_bridge() {
    let closure = dependency_closure(&metadata());
    let proxy = &closure["shadowcat-proxy"];
    assert!(
        !proxy.contains("shadowcat-cli"),
        "shadowcat-proxy must not depend on the CLI"
    );
}

/// Every target root of every workspace crate (lib, bin, test, bench,
/// example) opens with a `//!` doc.
#[test]
fn every_crate_root_has_a_doc() {
    let meta = metadata();
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut missing = Vec::new();
    for pkg in meta["packages"].as_array().unwrap() {
        if !members.contains(pkg["id"].as_str().unwrap()) {
            continue;
        }
        for target in pkg["targets"].as_array().unwrap() {
            let path = PathBuf::from(target["src_path"].as_str().unwrap());
            let text = std::fs::read_to_string(&path).unwrap();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty() && !l.starts_with("#!["))
                .unwrap_or("");
            if !first.starts_with("//!") {
                missing.push(path.display().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "crate roots without a `//!` doc: {missing:#?}"
    );
}

/// The design card puts every crate at the workspace's top level:
/// `Cargo.toml`, `shadowcat-transport`, `shadowcat-session`,
/// `shadowcat-proxy`, `shadowcat-cli`, `xtask`, `benches`.
#[test]
fn crates_sit_at_the_top_level() {
    let meta = metadata();
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let root = root().canonicalize().unwrap();
    let mut names = BTreeSet::new();
    for pkg in meta["packages"].as_array().unwrap() {
        if !members.contains(pkg["id"].as_str().unwrap()) {
            continue;
        }
        let manifest = PathBuf::from(pkg["manifest_path"].as_str().unwrap());
        let dir = manifest.parent().unwrap().canonicalize().unwrap();
        assert_eq!(
            dir.parent(),
            Some(root.as_path()),
            "{} is not at the workspace's top level",
            dir.display()
        );
        let folder = dir.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(
            folder,
            pkg["name"].as_str().unwrap(),
            "a crate's folder is its name"
        );
        names.insert(folder);
    }
    let want: BTreeSet<String> = [
        "shadowcat-transport",
        "shadowcat-session",
        "shadowcat-proxy",
        "shadowcat-cli",
        "xtask",
        "benches",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, want, "the workspace's crates are the design card's");
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if name.starts_with('.') || name == "target" || name == "node_modules" {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// Tests either run or are deleted: an ignored test proves nothing.
#[test]
fn no_ignored_tests() {
    let needle = concat!("#[", "ignore");
    let mut files = Vec::new();
    rust_files(&root(), &mut files);
    let offenders: Vec<_> = files
        .iter()
        .filter(|p| std::fs::read_to_string(p).unwrap().contains(needle))
        .map(|p| p.display().to_string())
        .collect();
    assert!(offenders.is_empty(), "ignored tests in {offenders:#?}");
}

#[test]
fn no_trailing_whitespace() {
    let mut files = Vec::new();
    rust_files(&root(), &mut files);
    let mut offenders = Vec::new();
    for p in files {
        for (i, line) in std::fs::read_to_string(&p).unwrap().lines().enumerate() {
            if line.ends_with(' ') || line.ends_with('\t') {
                offenders.push(format!("{}:{}", p.display(), i + 1));
            }
        }
    }
    assert!(offenders.is_empty(), "trailing whitespace: {offenders:#?}");
}

/// README starts with the two set-up commands; ARCHITECTURE.md names every
/// workspace crate in its codemap.
#[test]
fn docs_tell_the_truth() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let head: String = readme.lines().take(25).collect::<Vec<_>>().join("\n");
    assert!(
        head.contains("cargo xtask ci"),
        "README.md must show `cargo xtask ci` near the top"
    );
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(
        ci.contains("cargo xtask ci"),
        ".ci/run must run `cargo xtask ci`"
    );

    let arch = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let meta = metadata();
    for pkg in meta["packages"].as_array().unwrap() {
        let id = pkg["id"].as_str().unwrap();
        let member = meta["workspace_members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == id);
        let name = pkg["name"].as_str().unwrap();
        if member {
            assert!(
                arch.contains(&format!("`{name}`")),
                "ARCHITECTURE.md codemap does not mention `{name}`"
            );
        }
    }
}

/// The codemap follows the proxy crate's layout: every module under
/// `shadowcat-proxy/src` (a folder or a file) is named in ARCHITECTURE.md,
/// and so is every file of the stream engine.
#[test]
fn codemap_names_every_proxy_module() {
    let arch = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let src = root().join("shadowcat-proxy/src");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let named = if path.is_dir() {
            format!("`{name}/")
        } else if name == "lib.rs" {
            continue;
        } else {
            let stem = name.trim_end_matches(".rs");
            if arch.contains(&format!("`{stem}`")) {
                continue;
            }
            format!("`{name}`")
        };
        if !arch.contains(&named) {
            missing.push(named);
        }
    }
    for entry in std::fs::read_dir(src.join("stream")).unwrap() {
        let name = entry.unwrap().file_name().to_str().unwrap().to_owned();
        if name != "mod.rs" && !arch.contains(&format!("`{name}`")) {
            missing.push(format!("stream/{name}"));
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md does not name these proxy modules: {missing:?}"
    );
}

/// The stream engine is a leaf of the proxy crate: it knows nothing of
/// the HTTP server, the session cache or the forward proxies.
#[test]
fn stream_engine_knows_nothing_of_the_server() {
    let mut files = Vec::new();
    rust_files(&root().join("shadowcat-proxy/src/stream"), &mut files);
    assert!(!files.is_empty(), "no stream engine found");
    let mut offenders = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for banned in [
            "crate::server",
            "crate::session",
            "crate::forward",
            "hyper::server",
        ] {
            if text.contains(banned) {
                offenders.push(format!("{} uses {banned}", f.display()));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}
