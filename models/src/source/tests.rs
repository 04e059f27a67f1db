//! Unit tests of model references: parsing, local directories, resolving from a fake Hugging
//! Face cache (refs, commit hashes, incomplete snapshots, dangling symlinks, bad indexes), and
//! failing fast and clearly when the Hub cannot be reached.

use super::*;
use std::fs;
use std::time::{Duration, Instant};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const OTHER_COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";

fn offline() -> ResolveOptions {
    ResolveOptions {
        allow_download: false,
        progress: false,
    }
}

fn hub(s: &str) -> ModelRef {
    s.parse().unwrap()
}

/// Writes a snapshot the way huggingface_hub lays it out: blobs + relative symlinks.
fn write_snapshot(cache: &Path, repo: &str, commit: &str, files: &[(&str, &str)]) -> PathBuf {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snap = repo_dir.join("snapshots").join(commit);
    fs::create_dir_all(&snap).unwrap();
    fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    for (i, (name, content)) in files.iter().enumerate() {
        let blob = repo_dir.join("blobs").join(format!("{commit}-{i}"));
        fs::write(&blob, content).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(
            Path::new("../../blobs").join(blob.file_name().unwrap()),
            snap.join(name),
        )
        .unwrap();
        #[cfg(not(unix))]
        fs::copy(&blob, snap.join(name)).unwrap();
    }
    snap
}

fn write_ref(cache: &Path, repo: &str, name: &str, commit: &str) {
    let refs = cache
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("refs");
    let file = refs.join(name);
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(file, commit).unwrap(); // huggingface_hub writes no trailing newline
}

const SHARDED_INDEX: &str = r#"{"metadata": {"total_size": 8}, "weight_map": {
    "a.weight": "model-00001-of-00002.safetensors",
    "b.weight": "model-00002-of-00002.safetensors",
    "c.weight": "model-00001-of-00002.safetensors"}}"#;

fn sharded_files() -> Vec<(&'static str, &'static str)> {
    vec![
        ("config.json", "{}"),
        ("tokenizer.json", "{}"),
        ("tokenizer_config.json", "{}"),
        ("model.safetensors.index.json", SHARDED_INDEX),
        ("model-00001-of-00002.safetensors", "x"),
        ("model-00002-of-00002.safetensors", "y"),
    ]
}

#[test]
fn parse_local_paths() {
    for s in ["/abs/path", "./rel", "../up", ".", "..", "./org/name@v1"] {
        assert_eq!(
            s.parse::<ModelRef>().unwrap(),
            ModelRef::LocalDir(PathBuf::from(s)),
            "{s}"
        );
    }
    if let Some(home) = home_dir() {
        assert_eq!(
            "~".parse::<ModelRef>().unwrap(),
            ModelRef::LocalDir(home.clone())
        );
        assert_eq!(
            "~/m/x".parse::<ModelRef>().unwrap(),
            ModelRef::LocalDir(home.join("m/x"))
        );
    }
    // An existing relative path wins over the repo-id reading (tests run in the crate root).
    assert!(Path::new("src/gguf").is_dir());
    assert_eq!(
        "src/gguf".parse::<ModelRef>().unwrap(),
        ModelRef::LocalDir("src/gguf".into())
    );
    assert_eq!(
        "src".parse::<ModelRef>().unwrap(),
        ModelRef::LocalDir("src".into())
    );
}

#[test]
fn parse_hub_ids() {
    assert_eq!(
        hub("HuggingFaceTB/SmolLM2-135M-Instruct"),
        ModelRef::Hub {
            repo: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
            revision: None
        }
    );
    assert_eq!(
        hub("meta-llama/Llama-3.2-1B@main"),
        ModelRef::Hub {
            repo: "meta-llama/Llama-3.2-1B".into(),
            revision: Some("main".into())
        }
    );
    assert_eq!(
        hub(&format!("Qwen/Qwen2.5-0.5B@{COMMIT}")),
        ModelRef::Hub {
            repo: "Qwen/Qwen2.5-0.5B".into(),
            revision: Some(COMMIT.into())
        }
    );
    assert_eq!(
        hub("org/name_v1.5@refs/pr/1"),
        ModelRef::Hub {
            repo: "org/name_v1.5".into(),
            revision: Some("refs/pr/1".into())
        }
    );
    assert_eq!(hub("org/name@v1").to_string(), "org/name@v1");
    assert_eq!(hub("org/name").revision_or_main(), Some("main"));
}

#[test]
fn parse_rejects_malformed() {
    let long = format!("org/{}", "a".repeat(100));
    for s in [
        "",
        "   ",
        "gpt2-does-not-exist-here",
        "org/",
        "/name", // absolute path: parses as LocalDir, checked separately below
        "org/name/extra",
        "org name/x",
        "org/na me",
        "org/name@",
        "org/name@a b",
        "org/name@../../etc",
        "org/name@refs//x",
        "org/-name",
        "org/name.",
        "org/na--me",
        "org/na..me",
        "or!g/name",
        "org/näme",
        "org/name@v1@v2",
        long.as_str(),
    ] {
        if s == "/name" {
            assert!(matches!(s.parse::<ModelRef>(), Ok(ModelRef::LocalDir(_))));
            continue;
        }
        let err = s.parse::<ModelRef>().expect_err(s);
        assert!(matches!(err, SourceError::InvalidRef { .. }), "{s}: {err}");
        assert!(err.to_string().contains("invalid model reference"), "{err}");
    }
    let err = "gpt2".parse::<ModelRef>().unwrap_err().to_string();
    assert!(err.contains("org/name"), "{err}");
}

#[test]
fn local_dir_passthrough() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("config.json"), "{}").unwrap();
    let r = ModelRef::LocalDir(tmp.path().to_path_buf());
    let resolver = Resolver::with_cache_dir(tmp.path().join("no-cache"));
    assert_eq!(resolver.resolve(&r, &offline()).unwrap(), tmp.path());

    let missing = ModelRef::LocalDir(tmp.path().join("nope"));
    assert!(matches!(
        resolver.resolve(&missing, &offline()),
        Err(SourceError::LocalNotFound(_))
    ));
    let file = ModelRef::LocalDir(tmp.path().join("config.json"));
    assert!(matches!(
        resolver.resolve(&file, &offline()),
        Err(SourceError::NotADirectory(_))
    ));
    let empty = tempfile::tempdir().unwrap();
    let r = ModelRef::LocalDir(empty.path().to_path_buf());
    assert!(matches!(
        resolver.resolve(&r, &offline()),
        Err(SourceError::MissingConfig(_))
    ));
}

#[test]
fn resolves_cached_ref_main() {
    let cache = tempfile::tempdir().unwrap();
    let snap = write_snapshot(cache.path(), "org/tiny", COMMIT, &sharded_files());
    write_ref(cache.path(), "org/tiny", "main", COMMIT);
    let resolver = Resolver::with_cache_dir(cache.path());
    assert_eq!(
        resolver.resolve(&hub("org/tiny"), &offline()).unwrap(),
        snap
    );
    assert_eq!(
        resolver.resolve(&hub("org/tiny@main"), &offline()).unwrap(),
        snap
    );
    // A ref file with a trailing newline (as some tools write it) works too.
    write_ref(cache.path(), "org/tiny", "v1.0", &format!("{COMMIT}\n"));
    assert_eq!(
        resolver.resolve(&hub("org/tiny@v1.0"), &offline()).unwrap(),
        snap
    );
}

#[test]
fn resolves_commit_hash_and_branch_refs() {
    let cache = tempfile::tempdir().unwrap();
    let single = [
        ("config.json", "{}"),
        ("tokenizer.json", "{}"),
        ("model.safetensors", "w"),
    ];
    let old = write_snapshot(cache.path(), "org/tiny", COMMIT, &single);
    let new = write_snapshot(cache.path(), "org/tiny", OTHER_COMMIT, &single);
    write_ref(cache.path(), "org/tiny", "main", OTHER_COMMIT);
    write_ref(cache.path(), "org/tiny", "refs/pr/1", COMMIT);
    let resolver = Resolver::with_cache_dir(cache.path());
    assert_eq!(resolver.resolve(&hub("org/tiny"), &offline()).unwrap(), new);
    // A commit hash needs no ref file.
    assert_eq!(
        resolver
            .resolve(&hub(&format!("org/tiny@{COMMIT}")), &offline())
            .unwrap(),
        old
    );
    assert_eq!(
        resolver
            .resolve(&hub("org/tiny@refs/pr/1"), &offline())
            .unwrap(),
        old
    );
    // An unknown branch is not silently replaced by some other snapshot.
    let err = resolver
        .resolve(&hub("org/tiny@dev"), &offline())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no refs/dev"), "{err}");
}

#[test]
fn missing_shard_is_an_error_naming_both_places() {
    let cache = tempfile::tempdir().unwrap();
    let files: Vec<_> = sharded_files()
        .into_iter()
        .filter(|(n, _)| *n != "model-00002-of-00002.safetensors")
        .collect();
    write_snapshot(cache.path(), "org/tiny", COMMIT, &files);
    write_ref(cache.path(), "org/tiny", "main", COMMIT);
    let resolver = Resolver::with_cache_dir(cache.path());
    let err = resolver.resolve(&hub("org/tiny"), &offline()).unwrap_err();
    let SourceError::Unavailable {
        ref cache_dir,
        cache: ref why,
        ref hub,
        ref url,
        ..
    } = err
    else {
        panic!("unexpected {err}")
    };
    assert_eq!(cache_dir, &cache.path().join("models--org--tiny"));
    assert!(why.contains("model-00002-of-00002.safetensors"), "{why}");
    assert!(!why.contains("model-00001-of-00002.safetensors"), "{why}");
    assert!(hub.contains("disabled"), "{hub}");
    assert_eq!(url, "https://huggingface.co/org/tiny");
    let msg = err.to_string();
    assert!(
        msg.contains("models--org--tiny") && msg.contains("https://huggingface.co/org/tiny"),
        "{msg}"
    );
}

#[test]
fn dangling_symlink_counts_as_missing() {
    let cache = tempfile::tempdir().unwrap();
    let snap = write_snapshot(
        cache.path(),
        "org/tiny",
        COMMIT,
        &[
            ("config.json", "{}"),
            ("tokenizer.json", "{}"),
            ("model.safetensors", "w"),
        ],
    );
    write_ref(cache.path(), "org/tiny", "main", COMMIT);
    let blob = fs::canonicalize(snap.join("model.safetensors")).unwrap();
    fs::remove_file(blob).unwrap();
    let err = Resolver::with_cache_dir(cache.path())
        .resolve(&hub("org/tiny"), &offline())
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing model.safetensors"), "{err}");
}

#[test]
fn missing_tokenizer_and_bad_index() {
    let cache = tempfile::tempdir().unwrap();
    write_snapshot(
        cache.path(),
        "org/a",
        COMMIT,
        &[("config.json", "{}"), ("model.safetensors", "w")],
    );
    write_ref(cache.path(), "org/a", "main", COMMIT);
    write_snapshot(
        cache.path(),
        "org/b",
        COMMIT,
        &[
            ("config.json", "{}"),
            ("tokenizer.json", "{}"),
            (WEIGHTS_INDEX, r#"{"weight_map": {"x": "../../evil"}}"#),
        ],
    );
    write_ref(cache.path(), "org/b", "main", COMMIT);
    let resolver = Resolver::with_cache_dir(cache.path());
    let err = resolver
        .resolve(&hub("org/a"), &offline())
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing tokenizer.json"), "{err}");
    let err = resolver.resolve(&hub("org/b"), &offline()).unwrap_err();
    assert!(matches!(err, SourceError::InvalidIndex { .. }), "{err}");
}

#[test]
fn not_cached_offline() {
    let cache = tempfile::tempdir().unwrap();
    let err = Resolver::with_cache_dir(cache.path())
        .resolve(&hub("org/absent@v2"), &offline())
        .unwrap_err()
        .to_string();
    assert!(err.contains("org/absent@v2"), "{err}");
    assert!(err.contains("not in the cache"), "{err}");
    assert!(
        err.contains(
            &cache
                .path()
                .join("models--org--absent")
                .display()
                .to_string()
        ),
        "{err}"
    );
    assert!(err.contains("downloads are disabled"), "{err}");
}

/// With downloads allowed but the endpoint unreachable, the failure is quick and names both
/// the cache and the Hub. (A refused local port stands in for "no network".)
#[test]
fn unreachable_hub_fails_fast() {
    let cache = tempfile::tempdir().unwrap();
    let resolver = Resolver::with_cache_dir(cache.path()).endpoint("http://127.0.0.1:1");
    let start = Instant::now();
    let err = resolver
        .resolve(
            &hub("org/absent"),
            &ResolveOptions {
                allow_download: true,
                progress: false,
            },
        )
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    let msg = err.to_string();
    assert!(matches!(err, SourceError::Unavailable { .. }), "{msg}");
    assert!(
        msg.contains("not in the cache") && msg.contains("http://127.0.0.1:1/org/absent"),
        "{msg}"
    );
    // Either the probe or (with a proxy configured) the HTTP client reports the failure.
    assert!(
        msg.contains("unreachable") || msg.contains("cannot list"),
        "{msg}"
    );
    // Nothing was written into the cache.
    assert!(!cache
        .path()
        .join("models--org--absent")
        .join("refs")
        .exists());
}

/// Against the real Hub (`cargo test -p flint-models source -- --ignored --nocapture`): a repo
/// that does not exist fails with a clear message, quickly, with or without network.
#[test]
#[ignore = "talks to huggingface.co"]
fn real_hub_missing_repo() {
    let cache = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let err = Resolver::with_cache_dir(cache.path())
        .resolve(
            &hub("flint-test/no-such-model-xyz"),
            &ResolveOptions {
                allow_download: true,
                progress: false,
            },
        )
        .unwrap_err();
    eprintln!("{err}\n(after {:?})", start.elapsed());
    assert!(matches!(err, SourceError::Unavailable { .. }));
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn index_shards_are_deduplicated() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join(WEIGHTS_INDEX);
    fs::write(&p, SHARDED_INDEX).unwrap();
    assert_eq!(
        read_index_shards(&p).unwrap(),
        vec![
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"
        ]
    );
    fs::write(&p, "{").unwrap();
    assert!(matches!(
        read_index_shards(&p),
        Err(SourceError::InvalidIndex { .. })
    ));
}
