//! Patterns and filters from GitHub's documentation, and every delivery of the webhook corpus
//! (`shared/corpus/webhooks`, read by path).

use std::path::PathBuf;

use serde_json::{Value, json};

use super::pattern::{Pattern, PatternList};
use super::*;
use crate::workflow::EventFilter;

// ---------------------------------------------------------------------------------------------
// Patterns: GitHub's "Filter pattern cheat sheet", table by table.

/// (patterns, name, included?)
type Case = (&'static [&'static str], &'static str, bool);

fn check(cases: &[Case]) {
    for (patterns, name, want) in cases {
        let list = PatternList::parse(patterns).expect("the pattern compiles");
        assert_eq!(
            list.includes(name),
            *want,
            "patterns {patterns:?} on `{name}`"
        );
    }
}

#[test]
fn cheat_sheet_special_characters() {
    check(&[
        (&["Octo*"], "Octocat", true),
        // `?`: zero or one of the preceding character.
        (&["*.jsx?"], "page.js", true),
        (&["*.jsx?"], "page.jsx", true),
        (&["*.jsx?"], "page.jsxx", false),
        // `+`: one or more of the preceding character.
        (&["ab+c"], "abc", true),
        (&["ab+c"], "abbbc", true),
        (&["ab+c"], "ac", false),
        // `[]`
        (&["[CB]at"], "Cat", true),
        (&["[CB]at"], "Bat", true),
        (&["[CB]at"], "Hat", false),
        (&["[1-2]00"], "100", true),
        (&["[1-2]00"], "200", true),
        (&["[1-2]00"], "300", false),
        (&["[0-9a-z]"], "7", true),
        (&["[0-9a-z]"], "q", true),
        (&["[0-9a-z]"], "Q", false),
        // `!` is special only first.
        (&["a!b"], "a!b", true),
        // `\` escapes.
        (&["\\!file"], "!file", true),
        (&["release\\+1"], "release+1", true),
        (&["release\\+1"], "releasee1", false),
        (&["v1\\.0"], "v1.0", true),
        (&["v1.0"], "v1x0", false),
        (&["escape\\\\backslash"], "escape\\backslash", true),
        // A leading `?`/`+` is a plain character.
        (&["?x"], "?x", true),
    ]);
}

#[test]
fn cheat_sheet_branches_and_tags() {
    check(&[
        (&["feature/*"], "feature/my-branch", true),
        (&["feature/*"], "feature/your-branch", true),
        (&["feature/*"], "feature/beta-a/my-branch", false),
        (&["feature/**"], "feature/beta-a/my-branch", true),
        (&["feature/**"], "feature/your-branch", true),
        (&["feature/**"], "feature/mona/the/octocat", true),
        (&["main", "releases/mona-the-octocat"], "main", true),
        (
            &["main", "releases/mona-the-octocat"],
            "releases/mona-the-octocat",
            true,
        ),
        (&["main", "releases/mona-the-octocat"], "mainline", false),
        (&["*"], "main", true),
        (&["*"], "releases", true),
        (&["*"], "releases/v1", false),
        (&["**"], "all/the/branches", true),
        (&["**"], "every/tag", true),
        (&["*feature"], "mona-feature", true),
        (&["*feature"], "feature", true),
        (&["*feature"], "ver-10-feature", true),
        (&["*feature"], "feature-x", false),
        (&["v2*"], "v2", true),
        (&["v2*"], "v2.0", true),
        (&["v2*"], "v2.9", true),
        (&["v2*"], "v3", false),
        (&["v[12].[0-9]+.[0-9]+"], "v1.10.1", true),
        (&["v[12].[0-9]+.[0-9]+"], "v2.0.0", true),
        (&["v[12].[0-9]+.[0-9]+"], "v3.0.0", false),
        (&["v[12].[0-9]+.[0-9]+"], "v1.x.0", false),
    ]);
}

#[test]
fn cheat_sheet_file_paths() {
    check(&[
        (&["*"], "README.md", true),
        (&["*"], "server.rb", true),
        (&["*"], "docs/README.md", false),
        (&["*.jsx?"], "page.js", true),
        (&["*.jsx?"], "page.jsx", true),
        (&["**"], "all/the/files.md", true),
        (&["*.js"], "app.js", true),
        (&["*.js"], "index.js", true),
        (&["*.js"], "src/index.js", false),
        (&["**.js"], "index.js", true),
        (&["**.js"], "js/index.js", true),
        (&["**.js"], "src/js/app.js", true),
        (&["docs/*"], "docs/README.md", true),
        (&["docs/*"], "docs/file.txt", true),
        (&["docs/*"], "docs/mona/octocat.txt", false),
        (&["docs/**"], "docs/README.md", true),
        (&["docs/**"], "docs/mona/octocat.txt", true),
        (&["docs/**"], "README.md", false),
        (&["docs/**/*.md"], "docs/README.md", true),
        (&["docs/**/*.md"], "docs/mona/hello-world.md", true),
        (&["docs/**/*.md"], "docs/a/markdown/file.md", true),
        (&["docs/**/*.md"], "docs/a/markdown/file.txt", false),
        (&["**/docs/**"], "docs/hello.md", true),
        (&["**/docs/**"], "dir/docs/my-file.txt", true),
        (&["**/docs/**"], "space/docs/plan/space.doc", true),
        (&["**/docs/**"], "space/mydocs/plan.doc", false),
        (&["**/README.md"], "README.md", true),
        (&["**/README.md"], "js/README.md", true),
        (&["**/README.md"], "js/NOTREADME.md", false),
        (&["**/*src/**"], "a/src/app.js", true),
        (&["**/*src/**"], "my-src/code/js/app.js", true),
        (&["**/*-post.md"], "my-post.md", true),
        (&["**/*-post.md"], "path/their-post.md", true),
        (&["**/migrate-*.sql"], "migrate-10909.sql", true),
        (&["**/migrate-*.sql"], "db/migrate-v1.0.sql", true),
        (&["**/migrate-*.sql"], "db/sept/migrate-v1.sql", true),
        (&["*.md", "!README.md"], "hello.md", true),
        (&["*.md", "!README.md"], "README.md", false),
        (&["*.md", "!README.md"], "docs/hello.md", false),
        (&["*.md", "!README.md", "README*"], "hello.md", true),
        (&["*.md", "!README.md", "README*"], "README.md", true),
        (&["*.md", "!README.md", "README*"], "README.doc", true),
    ]);
}

#[test]
fn invalid_patterns_are_refused_with_where() {
    for (p, index) in [
        ("a[]", 2),
        ("a[b", 1),
        ("[a-]", 2),
        ("[z-a]", 2),
        ("[a-Z]", 2),
        ("[.]", 1),
        ("x\\", 1),
    ] {
        let err = Pattern::parse(p).expect_err(p);
        assert_eq!(err.index, index, "{p}: {err}");
    }
}

#[test]
fn long_names_do_not_blow_up() {
    let p = Pattern::parse("**a**a**a**a**a**b").expect("compiles");
    assert!(!p.matches(&"a".repeat(200)));
    let p = Pattern::parse("*a+*a+*a+*a+b").expect("compiles");
    assert!(!p.matches(&"a".repeat(200)));
}

// ---------------------------------------------------------------------------------------------
// Filters.

fn push_to(git_ref: &str, files: Option<&[&str]>) -> HookEvent {
    let mut ev = HookEvent::new(Provider::Github, "push", json!({}));
    let (name, kind) = split_ref(git_ref).expect("a branch or tag");
    ev.git_ref = Some(git_ref.to_owned());
    ev.ref_name = Some(name.to_owned());
    ev.ref_type = Some(kind.to_owned());
    ev.sha = Some("a".repeat(40));
    ev.changed_paths = files.map(|f| f.iter().map(|s| s.to_string()).collect());
    ev
}

fn pr(action: &str, base: &str, files: Option<&[&str]>) -> HookEvent {
    let mut ev = HookEvent::new(Provider::Github, "pull_request", json!({}));
    ev.action = Some(action.to_owned());
    ev.base_ref = Some(base.to_owned());
    ev.head_ref = Some("topic".to_owned());
    ev.git_ref = Some("refs/pull/1/merge".to_owned());
    ev.changed_paths = files.map(|f| f.iter().map(|s| s.to_string()).collect());
    ev
}

fn list(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn yes(m: &Match) -> bool {
    matches!(m, Match::Yes)
}

#[test]
fn push_branch_and_tag_filters() {
    let branches = EventFilter {
        branches: list(&["main", "mona/octocat", "releases/**"]),
        ..Default::default()
    };
    let tags = EventFilter {
        tags: list(&["v2", "v1.*"]),
        ..Default::default()
    };
    let both = EventFilter {
        branches: list(&["main"]),
        tags: list(&["v*"]),
        ..Default::default()
    };
    let ignore = EventFilter {
        branches_ignore: list(&["mona/octocat", "releases/**-alpha"]),
        ..Default::default()
    };
    let negated = EventFilter {
        branches: list(&["releases/**", "!releases/**-alpha"]),
        ..Default::default()
    };
    let cases: &[(&EventFilter, &str, bool)] = &[
        (&branches, "refs/heads/main", true),
        (&branches, "refs/heads/mona/octocat", true),
        (&branches, "refs/heads/releases/10", true),
        (&branches, "refs/heads/releases/beta/mona", true),
        (&branches, "refs/heads/dev", false),
        // Only branches filtered: tag pushes do not run.
        (&branches, "refs/tags/v2", false),
        (&tags, "refs/tags/v2", true),
        (&tags, "refs/tags/v1.9.1", true),
        (&tags, "refs/tags/v3", false),
        // Only tags filtered: branch pushes do not run.
        (&tags, "refs/heads/main", false),
        (&both, "refs/heads/main", true),
        (&both, "refs/heads/dev", false),
        (&both, "refs/tags/v9", true),
        (&both, "refs/tags/x9", false),
        (&ignore, "refs/heads/main", true),
        (&ignore, "refs/heads/mona/octocat", false),
        (&ignore, "refs/heads/releases/beta/3-alpha", false),
        (&ignore, "refs/heads/releases/beta/3", true),
        // branches-ignore only: tag pushes do not run.
        (&ignore, "refs/tags/v1", false),
        (&negated, "refs/heads/releases/10", true),
        (&negated, "refs/heads/releases/beta/3-alpha", false),
        (&EventFilter::default(), "refs/heads/any/thing", true),
        (&EventFilter::default(), "refs/tags/any", true),
    ];
    for (filter, git_ref, want) in cases {
        let m = matches(&push_to(git_ref, Some(&[])), filter, None);
        assert_eq!(yes(&m), *want, "{git_ref} with {filter:?}: {m:?}");
    }
}

#[test]
fn push_reasons_name_the_filter() {
    let f = EventFilter {
        branches: list(&["main"]),
        ..Default::default()
    };
    assert_eq!(
        matches(&push_to("refs/heads/dev", None), &f, None),
        Match::No("branch `dev` matches no pattern of `branches`".into())
    );
    let f = EventFilter {
        tags: list(&["v*"]),
        ..Default::default()
    };
    assert_eq!(
        matches(&push_to("refs/heads/dev", None), &f, None),
        Match::No("the workflow filters tags only, so a branch push does not run it".into())
    );
    let f = EventFilter {
        branches: list(&["[]"]),
        ..Default::default()
    };
    let Match::No(why) = matches(&push_to("refs/heads/dev", None), &f, None) else {
        panic!("an invalid pattern runs nothing");
    };
    assert!(why.contains("invalid filter pattern `[]`"), "{why}");
}

#[test]
fn paths_filters() {
    let paths = EventFilter {
        paths: list(&["**.js"]),
        ..Default::default()
    };
    let negated = EventFilter {
        paths: list(&["sub-project/**", "!sub-project/docs/**"]),
        ..Default::default()
    };
    let ignore = EventFilter {
        paths_ignore: list(&["docs/**"]),
        ..Default::default()
    };
    let branch_and_paths = EventFilter {
        branches: list(&["releases/**"]),
        paths: list(&["**.js"]),
        ..Default::default()
    };
    let cases: &[(&EventFilter, &str, &[&str], bool)] = &[
        (&paths, "refs/heads/main", &["app.js"], true),
        (
            &paths,
            "refs/heads/main",
            &["README.md", "src/app.js"],
            true,
        ),
        (&paths, "refs/heads/main", &["README.md"], false),
        (&paths, "refs/heads/main", &[], false),
        // Path filters are not evaluated for tag pushes.
        (&paths, "refs/tags/v1", &["README.md"], true),
        (&negated, "refs/heads/main", &["sub-project/app.rs"], true),
        (
            &negated,
            "refs/heads/main",
            &["sub-project/docs/a.md"],
            false,
        ),
        (
            &negated,
            "refs/heads/main",
            &["sub-project/docs/a.md", "sub-project/x"],
            true,
        ),
        (&ignore, "refs/heads/main", &["docs/a.md"], false),
        (
            &ignore,
            "refs/heads/main",
            &["docs/a.md", "docs/b/c.md"],
            false,
        ),
        (&ignore, "refs/heads/main", &["docs/a.md", "src/a.rs"], true),
        (&ignore, "refs/heads/main", &[], true),
        (&branch_and_paths, "refs/heads/releases/1", &["a.js"], true),
        (&branch_and_paths, "refs/heads/releases/1", &["a.rs"], false),
        (&branch_and_paths, "refs/heads/main", &["a.js"], false),
    ];
    for (filter, git_ref, files, want) in cases {
        let m = matches(&push_to(git_ref, Some(files)), filter, None);
        assert_eq!(yes(&m), *want, "{git_ref} {files:?} with {filter:?}: {m:?}");
    }
}

#[test]
fn paths_wanted_only_when_the_rest_matches() {
    let f = EventFilter {
        branches: list(&["main"]),
        paths: list(&["src/**"]),
        ..Default::default()
    };
    assert_eq!(
        matches(&push_to("refs/heads/main", None), &f, None),
        Match::NeedPaths
    );
    assert!(matches!(
        matches(&push_to("refs/heads/dev", None), &f, None),
        Match::No(_)
    ));
    let files = list(&["src/main.rs"]);
    assert_eq!(
        matches(&push_to("refs/heads/main", None), &f, Some(&files)),
        Match::Yes
    );
    let files = list(&["README.md"]);
    assert!(matches!(
        matches(&push_to("refs/heads/main", None), &f, Some(&files)),
        Match::No(_)
    ));
    // A deleted branch has no files; path filters are not evaluated.
    let mut deleted = push_to("refs/heads/main", None);
    deleted.deleted = true;
    deleted.sha = None;
    assert_eq!(matches(&deleted, &f, None), Match::Yes);
}

#[test]
fn pull_request_filters() {
    let none = EventFilter::default();
    let closed = EventFilter {
        types: list(&["closed"]),
        ..Default::default()
    };
    let to_main = EventFilter {
        branches: list(&["main", "releases/**"]),
        ..Default::default()
    };
    let not_to_mona = EventFilter {
        branches_ignore: list(&["mona/**"]),
        ..Default::default()
    };
    let cases: &[(&EventFilter, &str, &str, bool)] = &[
        (&none, "opened", "main", true),
        (&none, "synchronize", "main", true),
        (&none, "reopened", "main", true),
        (&none, "closed", "main", false),
        (&none, "labeled", "main", false),
        (&closed, "closed", "main", true),
        (&closed, "opened", "main", false),
        // branches match the base branch.
        (&to_main, "opened", "main", true),
        (&to_main, "opened", "releases/2", true),
        (&to_main, "opened", "topic", false),
        (&not_to_mona, "opened", "mona/x", false),
        (&not_to_mona, "opened", "main", true),
    ];
    for (filter, action, base, want) in cases {
        let m = matches(&pr(action, base, None), filter, None);
        assert_eq!(
            yes(&m),
            *want,
            "{action} into {base} with {filter:?}: {m:?}"
        );
    }
    let paths = EventFilter {
        paths: list(&["src/**"]),
        ..Default::default()
    };
    assert_eq!(
        matches(&pr("opened", "main", None), &paths, None),
        Match::NeedPaths
    );
    assert_eq!(
        matches(&pr("opened", "main", Some(&["src/a"])), &paths, None),
        Match::Yes
    );
    // Types are decided before paths are asked for.
    assert!(matches!(
        matches(&pr("closed", "main", None), &paths, None),
        Match::No(_)
    ));
}

#[test]
fn release_and_other_types() {
    let mut rel = HookEvent::new(
        Provider::Github,
        "release",
        json!({"release": {"draft": false}}),
    );
    rel.action = Some("created".into());
    assert_eq!(matches(&rel, &EventFilter::default(), None), Match::Yes);
    let published = EventFilter {
        types: list(&["published"]),
        ..Default::default()
    };
    assert!(matches!(matches(&rel, &published, None), Match::No(_)));
    rel.action = Some("published".into());
    assert_eq!(matches(&rel, &published, None), Match::Yes);
    // Drafts do not run created/edited/deleted.
    rel.payload = json!({"release": {"draft": true}});
    rel.action = Some("created".into());
    assert!(matches!(
        matches(&rel, &EventFilter::default(), None),
        Match::No(_)
    ));

    let mut create = HookEvent::new(Provider::Github, "create", json!({}));
    create.git_ref = Some("refs/tags/v1".into());
    assert_eq!(matches(&create, &EventFilter::default(), None), Match::Yes);
}

#[test]
fn triggers_without_the_event_do_not_run() {
    let mut t = crate::workflow::Triggers::default();
    t.events
        .insert("pull_request".into(), EventFilter::default());
    assert_eq!(
        matches_triggers(&push_to("refs/heads/main", None), &t, None),
        Match::No("the workflow does not run on `push`".into())
    );
    assert_eq!(
        matches_triggers(&pr("opened", "main", None), &t, None),
        Match::Yes
    );
}

// ---------------------------------------------------------------------------------------------
// The webhook corpus.

fn corpus(provider: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/corpus/webhooks")
        .join(provider)
}

fn load(provider: &str, file: &str) -> Value {
    let path = corpus(provider).join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn event(provider: Provider, header: &str, dir: &str, file: &str) -> HookEvent {
    normalize(provider, header, load(dir, file))
        .unwrap_or_else(|e| panic!("{dir}/{file}: {e}"))
        .unwrap_or_else(|| panic!("{dir}/{file}: no event"))
}

fn strs(v: &[&str]) -> Option<Vec<String>> {
    Some(list(v))
}

/// The GitHub files are named `<X-GitHub-Event>.<variant>.payload.json`.
#[test]
fn every_github_delivery_normalizes() {
    let mut seen = 0;
    for entry in std::fs::read_dir(corpus("github")).expect("the GitHub corpus is there") {
        let name = entry.expect("a directory entry").file_name();
        let name = name.to_str().expect("a UTF-8 file name");
        if !name.ends_with(".payload.json") {
            continue;
        }
        seen += 1;
        let header = name.split('.').next().expect("an event name");
        let out = normalize(Provider::Github, header, load("github", name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let runs = matches!(
            header,
            "push" | "pull_request" | "release" | "create" | "delete"
        );
        assert_eq!(out.is_some(), runs, "{name}");
        if let Some(ev) = out {
            assert_eq!(ev.event_name, header, "{name}");
            assert!(ev.git_ref.is_some(), "{name}");
            assert_eq!(
                ev.repository.as_deref(),
                ev.payload
                    .pointer("/repository/full_name")
                    .and_then(Value::as_str),
                "{name}"
            );
            assert!(ev.actor.is_some(), "{name}");
        }
    }
    assert!(seen >= 25, "only {seen} GitHub payloads");
}

/// Every GitHub delivery of the corpus reads the same through [`read_github_body`] as
/// parsed whole: the event, its `github` fields, its `pull_request_target`, its commits and
/// the filters that read the payload (a draft release too).
#[test]
fn github_bodies_read_in_part_give_what_they_give_whole() {
    let mut seen = 0;
    for entry in std::fs::read_dir(corpus("github")).expect("the GitHub corpus is there") {
        let name = entry.expect("a directory entry").file_name();
        let name = name.to_str().expect("a UTF-8 file name").to_owned();
        if !name.ends_with(".payload.json") {
            continue;
        }
        let header = name.split('.').next().expect("an event name");
        let text = std::fs::read_to_string(corpus("github").join(&name)).unwrap();
        let mut bodies = vec![text.clone()];
        if header == "release" {
            // The same release as a draft.
            let mut v: Value = serde_json::from_str(&text).unwrap();
            v["release"]["draft"] = json!(true);
            bodies.push(v.to_string());
        }
        for body in bodies {
            seen += 1;
            let whole = normalize(
                Provider::Github,
                header,
                serde_json::from_str(&body).unwrap(),
            );
            let part = normalize(Provider::Github, header, read_github_body(&body).unwrap());
            let (Ok(whole), Ok(part)) = (whole, part) else {
                panic!("{name}: both must normalise");
            };
            let (Some(whole), Some(part)) = (whole, part) else {
                continue;
            };
            assert_eq!(github_fields(&whole), github_fields(&part), "{name}");
            assert_eq!(
                pull_request_head(&whole),
                pull_request_head(&part),
                "{name}"
            );
            assert_eq!(
                pull_request_base(&whole),
                pull_request_base(&part),
                "{name}"
            );
            let targets = (pull_request_target(&whole), pull_request_target(&part));
            let without_payload = |ev: Option<HookEvent>| {
                ev.map(|mut ev| {
                    ev.payload = Value::Null;
                    ev
                })
            };
            assert_eq!(
                without_payload(targets.0),
                without_payload(targets.1),
                "{name}"
            );
            for action in ["created", "published", "opened", "closed"] {
                let (mut w, mut p) = (whole.clone(), part.clone());
                w.action = Some(action.to_owned());
                p.action = Some(action.to_owned());
                let filter = EventFilter {
                    types: list(&[action]),
                    ..Default::default()
                };
                assert_eq!(
                    matches(&w, &filter, None),
                    matches(&p, &filter, None),
                    "{name}"
                );
            }
            assert_eq!(
                without_payload(Some(whole)),
                without_payload(Some(part)),
                "{name}"
            );
        }
    }
    assert!(seen >= 25, "only {seen} GitHub payloads");
}

#[test]
fn github_known_deliveries() {
    let ev = event(
        Provider::Github,
        "push",
        "github",
        "push.go-playground.payload.json",
    );
    assert_eq!(ev.git_ref.as_deref(), Some("refs/heads/master"));
    assert_eq!(ev.ref_name.as_deref(), Some("master"));
    assert_eq!(ev.ref_type.as_deref(), Some("branch"));
    assert_eq!(
        ev.sha.as_deref(),
        Some("fd489864e7642b48eaad6e3f155c10e46810ec72")
    );
    assert_eq!(
        ev.before.as_deref(),
        Some("737d38c599c1b2991664dfc6155d6bf516fcce36")
    );
    assert_eq!(ev.repository.as_deref(), Some("binkkatal/sample_app"));
    assert!(!ev.deleted);
    let files = ev.changed_paths.clone().expect("the commits list files");
    assert!(!files.is_empty());

    // A deleted tag.
    let ev = event(Provider::Github, "push", "github", "push.payload.json");
    assert_eq!(ev.git_ref.as_deref(), Some("refs/tags/simple-tag"));
    assert_eq!(ev.ref_type.as_deref(), Some("tag"));
    assert!(ev.deleted);
    assert_eq!(ev.sha, None);
    assert_eq!(
        ev.before.as_deref(),
        Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246")
    );
    assert_eq!(ev.actor.as_deref(), Some("Codertocat"));

    // A new branch with one commit.
    let ev = event(
        Provider::Github,
        "push",
        "github",
        "push.with-new-branch.payload.json",
    );
    assert_eq!(ev.git_ref.as_deref(), Some("refs/heads/master"));
    assert_eq!(ev.before, None);
    assert!(ev.changed_paths.is_some());

    let ev = event(
        Provider::Github,
        "pull_request",
        "github",
        "pull_request.synchronize.payload.json",
    );
    assert_eq!(ev.action.as_deref(), Some("synchronize"));
    assert_eq!(ev.number, Some(2));
    assert_eq!(ev.git_ref.as_deref(), Some("refs/pull/2/merge"));
    assert_eq!(ev.ref_name.as_deref(), Some("2/merge"));
    assert_eq!(ev.fetch_ref.as_deref(), Some("refs/pull/2/head"));
    assert_eq!(
        ev.sha.as_deref(),
        Some("ec26c3e57ca3a959ca5aad62de7213c562f8c821")
    );
    assert_eq!(
        ev.before.as_deref(),
        Some("f95f852bd8fca8fcc58a9a2d6c842781e32a215e")
    );
    assert_eq!(ev.head_ref.as_deref(), Some("changes"));
    assert_eq!(ev.base_ref.as_deref(), Some("master"));
    assert_eq!(ev.changed_paths, None);

    let ev = event(
        Provider::Github,
        "release",
        "github",
        "release.published.payload.json",
    );
    assert_eq!(ev.action.as_deref(), Some("published"));
    assert_eq!(ev.git_ref.as_deref(), Some("refs/tags/0.0.1"));
    assert_eq!(ev.ref_type.as_deref(), Some("tag"));
    // `target_commitish` is `master`: a branch, not the tag's commit.
    assert_eq!(ev.sha, None);

    let ev = event(Provider::Github, "create", "github", "create.payload.json");
    assert_eq!(ev.git_ref.as_deref(), Some("refs/tags/simple-tag"));
    assert_eq!(ev.ref_type.as_deref(), Some("tag"));

    // `delete` runs at the default branch; the deleted ref stays in the payload.
    let ev = event(Provider::Github, "delete", "github", "delete.payload.json");
    assert_eq!(ev.git_ref.as_deref(), Some("refs/heads/master"));
    assert_eq!(ev.payload["ref"], "simple-tag");

    for ping in [
        "ping.payload.json",
        "ping.with-app_id.payload.json",
        "ping.with-organization.payload.json",
    ] {
        assert_eq!(
            normalize(Provider::Github, "ping", load("github", ping)),
            Ok(None),
            "{ping}"
        );
    }
}

#[test]
fn github_context_of_a_push() {
    let ev = event(
        Provider::Github,
        "push",
        "github",
        "push.go-playground.payload.json",
    );
    let cx = github_context(&ev);
    assert_eq!(cx["event_name"], "push");
    assert_eq!(cx["ref"], "refs/heads/master");
    assert_eq!(cx["ref_name"], "master");
    assert_eq!(cx["ref_type"], "branch");
    assert_eq!(cx["sha"], "fd489864e7642b48eaad6e3f155c10e46810ec72");
    assert_eq!(cx["repository"], "binkkatal/sample_app");
    assert_eq!(cx["repository_owner"], "binkkatal");
    assert_eq!(cx["actor"], "binkkatal");
    assert_eq!(cx["head_ref"], "");
    assert_eq!(cx["base_ref"], "");
    assert_eq!(
        cx["event"]["after"],
        "fd489864e7642b48eaad6e3f155c10e46810ec72"
    );

    let ev = event(
        Provider::Github,
        "pull_request",
        "github",
        "pull_request.opened.payload.json",
    );
    let cx = github_context(&ev);
    assert_eq!(cx["ref"], "refs/pull/2/merge");
    assert_eq!(cx["head_ref"], "changes");
    assert_eq!(cx["base_ref"], "master");
    assert_eq!(cx["event"]["pull_request"]["number"], 2);
}

/// A pull request is also a `pull_request_target` event, at the base branch and its commit;
/// path filters look at the pull request's head. Other events are not.
#[test]
fn a_pull_request_is_also_its_target_at_the_base_branch() {
    let pr = event(
        Provider::Github,
        "pull_request",
        "github",
        "pull_request.opened.payload.json",
    );
    let target = pull_request_target(&pr).expect("a pull request has a target");
    assert_eq!(target.event_name, "pull_request_target");
    assert_eq!(target.git_ref.as_deref(), Some("refs/heads/master"));
    assert_eq!(target.ref_name.as_deref(), Some("master"));
    let base = pr.payload["pull_request"]["base"]["sha"].as_str().unwrap();
    assert_eq!(target.sha.as_deref(), Some(base));
    assert_ne!(target.sha, pr.sha, "the target runs the base, not the head");
    assert_eq!(target.fetch_ref, None);
    assert_eq!(
        (target.action.as_deref(), target.head_ref.as_deref()),
        (Some("opened"), Some("changes"))
    );
    assert_eq!(pull_request_head(&target), pr.sha.as_deref());
    // Its filters are a pull request's: types, then branches against the base.
    let closed = EventFilter {
        types: list(&["closed"]),
        ..Default::default()
    };
    assert!(yes(&matches(&target, &EventFilter::default(), None)));
    assert!(!yes(&matches(&target, &closed, None)));

    let push = event(
        Provider::Github,
        "push",
        "github",
        "push.go-playground.payload.json",
    );
    assert_eq!(pull_request_target(&push), None);
}

#[test]
fn malformed_github_payloads_name_the_field() {
    let cases: &[(&str, Value, &str)] = &[
        ("push", json!({"after": "a"}), "ref"),
        ("push", json!({"ref": "refs/heads/x"}), "after"),
        ("push", json!({"ref": 5, "after": "a"}), "ref"),
        (
            "push",
            json!({"ref": "refs/heads/x", "after": "a", "commits": "no"}),
            "commits",
        ),
        (
            "pull_request",
            json!({"action": "opened", "number": 1}),
            "pull_request",
        ),
        (
            "pull_request",
            json!({"action": "opened", "number": 1, "pull_request": {"head": {"ref": "a"}, "base": {"ref": "b"}}}),
            "pull_request.head.sha",
        ),
        (
            "pull_request",
            json!({"action": "opened", "number": 1, "pull_request": {"head": {"ref": "a", "sha": "s"}, "base": {}}}),
            "pull_request.base.ref",
        ),
        (
            "pull_request",
            json!({"number": 1, "pull_request": {}}),
            "action",
        ),
        (
            "release",
            json!({"action": "published", "release": {}}),
            "release.tag_name",
        ),
        ("create", json!({"ref": "x"}), "ref_type"),
        (
            "create",
            json!({"ref": "x", "ref_type": "note"}),
            "ref_type",
        ),
        ("delete", json!({"ref_type": "tag"}), "ref"),
    ];
    for (header, payload, field) in cases {
        let err = normalize(Provider::Github, header, payload.clone()).expect_err(header);
        assert_eq!(err.field(), Some(*field), "{header} {payload}: {err}");
    }
    assert_eq!(
        normalize(Provider::Github, "push", json!([1])),
        Err(NormalizeError::NotAnObject)
    );
}

#[test]
fn generic_deliveries_are_github_shaped() {
    let body = json!({
        "ref": "refs/heads/main",
        "after": "b".repeat(40),
        "commits": [{"id": "b", "added": ["a"], "modified": ["b"], "removed": ["a"]}],
    });
    let ev = normalize(Provider::Generic, "", body.clone())
        .expect("valid")
        .expect("a push");
    assert_eq!(ev.event_name, "push");
    assert_eq!(ev.provider, Provider::Generic);
    assert_eq!(ev.changed_paths, strs(&["a", "b"]));
    assert_eq!(normalize(Provider::Generic, "ping", body), Ok(None));
}

#[test]
fn providers_round_trip_their_names() {
    for p in [
        Provider::Github,
        Provider::Gitlab,
        Provider::Gitea,
        Provider::Generic,
    ] {
        assert_eq!(p.as_str().parse::<Provider>(), Ok(p));
    }
    assert!("bitbucket".parse::<Provider>().is_err());
}

/// Every `(file, event header)` the corpus's `headers.json` lists for `dir`, plus the files
/// SOURCES.md gives a header for without a test case upstream.
fn cases(dir: &str) -> Vec<(String, String)> {
    let headers = load(dir, "headers.json");
    let mut out: Vec<(String, String)> = headers["cases"]
        .as_array()
        .expect("headers.json lists cases")
        .iter()
        .map(|c| {
            let file = c["file"].as_str().expect("a file").to_owned();
            let h = c["headers"].as_object().expect("headers");
            let event = h
                .iter()
                .find(|(k, _)| k.ends_with("-Event"))
                .and_then(|(_, v)| v.as_str())
                .expect("an event header")
                .to_owned();
            (file, event)
        })
        .collect();
    if dir == "gitlab" {
        for (file, event) in [
            ("job-event.json", "Job Hook"),
            ("xanzy-go-gitlab.job.json", "Job Hook"),
            ("xanzy-go-gitlab.merge_request.json", "Merge Request Hook"),
            ("xanzy-go-gitlab.pipeline.json", "Pipeline Hook"),
            ("xanzy-go-gitlab.push.json", "Push Hook"),
            ("xanzy-go-gitlab.tag_push.json", "Tag Push Hook"),
        ] {
            out.push((file.to_owned(), event.to_owned()));
        }
    }
    out
}

fn outcome(provider: Provider, dir: &str, file: &str, header: &str) -> String {
    match normalize(provider, header, load(dir, file)) {
        Ok(Some(ev)) => ev.event_name,
        Ok(None) => "-".to_owned(),
        Err(e) => format!("error at {}", e.field().unwrap_or("?")),
    }
}

/// What each corpus delivery becomes: the event name, `-` for nothing to run, or the field an
/// error names. Every JSON file of the folder is listed (a new file fails the test).
const OUTCOMES: &[(&str, &[(&str, &str)])] = &[
    (
        "gitlab",
        &[
            ("push-event.json", "push"),
            ("tag-event.json", "push"),
            ("merge-request-event.json", "pull_request"),
            ("release-event.json", "release"),
            ("xanzy-go-gitlab.push.json", "push"),
            ("xanzy-go-gitlab.tag_push.json", "push"),
            ("xanzy-go-gitlab.merge_request.json", "pull_request"),
            ("xanzy-go-gitlab.pipeline.json", "-"),
            ("xanzy-go-gitlab.job.json", "-"),
            ("issue-event.json", "-"),
            ("confidential-issue-event.json", "-"),
            ("comment-commit-event.json", "-"),
            ("confidential-comment-event.json", "-"),
            ("comment-merge-request-event.json", "-"),
            ("comment-issue-event.json", "-"),
            ("comment-snippet-event.json", "-"),
            ("wikipage-event.json", "-"),
            ("pipeline-event.json", "-"),
            ("build-event.json", "-"),
            ("job-event.json", "-"),
            ("deployment-event.json", "-"),
            // System hooks come for every project of an instance: never run on.
            ("system-push-event.json", "-"),
            ("system-tag-event.json", "-"),
            ("system-merge-request-event.json", "-"),
            ("system-project-created.json", "-"),
            ("system-project-destroyed.json", "-"),
            ("system-project-renamed.json", "-"),
            ("system-project-transferred.json", "-"),
            ("system-project-updated.json", "-"),
            ("system-team-member-added.json", "-"),
            ("system-team-member-removed.json", "-"),
            ("system-team-member-updated.json", "-"),
            ("system-user-created.json", "-"),
            ("system-user-removed.json", "-"),
            ("system-user-failed-login.json", "-"),
            ("system-user-renamed.json", "-"),
            ("system-key-added.json", "-"),
            ("system-key-removed.json", "-"),
            ("system-group-created.json", "-"),
            ("system-group-removed.json", "-"),
            ("system-group-renamed.json", "-"),
            ("system-group-member-added.json", "-"),
            ("system-group-member-removed.json", "-"),
            ("system-group-member-updated.json", "-"),
        ],
    ),
    (
        "gitea",
        &[
            ("push-event.json", "push"),
            ("pull-request-event.json", "pull_request"),
            ("release-event.json", "release"),
            ("create-event.json", "create"),
            ("delete-event.json", "delete"),
            ("fork-event.json", "-"),
            ("issues-event.json", "-"),
            ("issue-assign-event.json", "-"),
            ("issue-label-event.json", "-"),
            ("issue-milestone-event.json", "-"),
            ("issue-comment-event.json", "-"),
            ("pull-request-assign-event.json", "-"),
            ("pull-request-label-event.json", "-"),
            ("pull-request-milestone-event.json", "-"),
            ("pull-request-comment-event.json", "-"),
            ("pull-request-review-event.json", "-"),
            ("repository-event.json", "-"),
        ],
    ),
    (
        "gogs",
        &[
            ("push-event.json", "push"),
            // The upstream test file cut this payload down to four fields.
            ("pull-request-event.json", "error at pull_request.head.sha"),
            ("release-event.json", "release"),
            ("create-event.json", "create"),
            ("delete-event.json", "delete"),
            ("fork-event.json", "-"),
            ("issues-event.json", "-"),
            ("issue-comment-event.json", "-"),
        ],
    ),
];

#[test]
fn every_gitlab_gitea_gogs_delivery_has_its_outcome() {
    for (dir, expected) in OUTCOMES {
        let mut on_disk: Vec<String> = std::fs::read_dir(corpus(dir))
            .unwrap_or_else(|e| panic!("read {dir}: {e}"))
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .into_string()
                    .expect("UTF-8")
            })
            .filter(|n| n.ends_with(".json") && n != "headers.json")
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = expected.iter().map(|(f, _)| f.to_string()).collect();
        listed.sort();
        assert_eq!(
            on_disk, listed,
            "the table lists exactly the files of {dir}"
        );

        let provider = if *dir == "gitlab" {
            Provider::Gitlab
        } else {
            Provider::Gitea
        };
        let all = cases(dir);
        for (file, want) in *expected {
            let headers: Vec<&String> = all
                .iter()
                .filter(|(f, _)| f == file)
                .map(|(_, h)| h)
                .collect();
            assert!(!headers.is_empty(), "{dir}/{file} has an event header");
            for header in headers {
                assert_eq!(
                    outcome(provider, dir, file, header),
                    *want,
                    "{dir}/{file} sent as `{header}`"
                );
            }
        }
    }
}

#[test]
fn gitlab_known_deliveries() {
    let ev = event(Provider::Gitlab, "Push Hook", "gitlab", "push-event.json");
    assert_eq!(ev.provider, Provider::Gitlab);
    assert_eq!(ev.event_name, "push");
    assert_eq!(ev.git_ref.as_deref(), Some("refs/heads/master"));
    assert_eq!(ev.ref_type.as_deref(), Some("branch"));
    assert_eq!(
        ev.sha.as_deref(),
        Some("da1560886d4f094c3e6c9ef40349f7d38b5d27d7")
    );
    assert_eq!(
        ev.before.as_deref(),
        Some("95790bf891e76fee5e1747ab589903a6a1f80f22")
    );
    assert_eq!(ev.repository.as_deref(), Some("mike/diaspora"));
    // Older GitLab: only the display name.
    assert_eq!(ev.actor.as_deref(), Some("John Smith"));
    // 4 commits, 2 listed: the files are left to git.
    assert_eq!(ev.changed_paths, None);
    assert_eq!(ev.payload["repository"]["full_name"], "mike/diaspora");
    assert_eq!(ev.payload["commits"][0]["added"][0], "CHANGELOG");
    assert_eq!(
        ev.payload["head_commit"]["id"],
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    );
    assert_eq!(ev.payload["kiln_original"]["object_kind"], "push");

    let ev = event(
        Provider::Gitlab,
        "Push Hook",
        "gitlab",
        "xanzy-go-gitlab.push.json",
    );
    assert_eq!(ev.actor.as_deref(), Some("jsmith"));
    assert_eq!(ev.changed_paths, None, "4 commits, 2 listed");

    let ev = event(
        Provider::Gitlab,
        "Tag Push Hook",
        "gitlab",
        "tag-event.json",
    );
    assert_eq!(ev.git_ref.as_deref(), Some("refs/tags/v1.0.0"));
    assert_eq!(ev.ref_name.as_deref(), Some("v1.0.0"));
    assert_eq!(ev.ref_type.as_deref(), Some("tag"));
    assert_eq!(
        ev.sha.as_deref(),
        Some("82b3d5ae55f7080f1e6022629cdb57bfae7cccc7")
    );
    assert_eq!(ev.before, None);
    assert_eq!(ev.payload["created"], true);

    let ev = event(
        Provider::Gitlab,
        "Merge Request Hook",
        "gitlab",
        "merge-request-event.json",
    );
    assert_eq!(ev.event_name, "pull_request");
    assert_eq!(ev.action.as_deref(), Some("opened"));
    assert_eq!(ev.number, Some(1));
    assert_eq!(ev.git_ref.as_deref(), Some("refs/pull/1/merge"));
    assert_eq!(ev.fetch_ref.as_deref(), Some("refs/merge-requests/1/head"));
    assert_eq!(
        ev.sha.as_deref(),
        Some("da1560886d4f094c3e6c9ef40349f7d38b5d27d7")
    );
    assert_eq!(ev.head_ref.as_deref(), Some("ms-viewport"));
    assert_eq!(ev.base_ref.as_deref(), Some("master"));
    assert_eq!(ev.actor.as_deref(), Some("root"));
    assert_eq!(ev.repository.as_deref(), Some("gitlabhq/gitlab-test"));
    assert_eq!(ev.payload["pull_request"]["head"]["ref"], "ms-viewport");
    assert_eq!(ev.payload["pull_request"]["base"]["ref"], "master");
    assert_eq!(ev.payload["pull_request"]["state"], "open");
    assert_eq!(ev.payload["pull_request"]["merged"], false);
    assert_eq!(ev.payload["number"], 1);
    assert_eq!(ev.payload["sender"]["login"], "root");

    let ev = event(
        Provider::Gitlab,
        "Release Hook",
        "gitlab",
        "release-event.json",
    );
    assert_eq!(ev.action.as_deref(), Some("published"));
    assert_eq!(ev.git_ref.as_deref(), Some("refs/tags/v1.1"));
    assert_eq!(
        ev.sha.as_deref(),
        Some("ee0a3fb31ac16e11b9dbb596ad16d4af654d08f8")
    );
    assert_eq!(ev.payload["release"]["tag_name"], "v1.1");
}

/// GitLab's merge request actions in GitHub's words.
#[test]
fn gitlab_merge_request_actions() {
    let base = load("gitlab", "merge-request-event.json");
    let with = |action: &str, oldrev: Option<&str>| {
        let mut p = base.clone();
        p["object_attributes"]["action"] = json!(action);
        if let Some(o) = oldrev {
            p["object_attributes"]["oldrev"] = json!(o);
        }
        normalize(Provider::Gitlab, "Merge Request Hook", p.clone()).expect("valid")
    };
    let action = |action: &str, oldrev: Option<&str>| with(action, oldrev).and_then(|e| e.action);
    assert_eq!(action("open", None).as_deref(), Some("opened"));
    assert_eq!(action("reopen", None).as_deref(), Some("reopened"));
    assert_eq!(action("close", None).as_deref(), Some("closed"));
    assert_eq!(
        action("update", Some("abc")).as_deref(),
        Some("synchronize")
    );
    assert_eq!(action("update", None).as_deref(), Some("edited"));
    assert_eq!(action("approved", None), None);
    let merged = with("merge", None).expect("an event");
    assert_eq!(merged.action.as_deref(), Some("closed"));
    assert_eq!(merged.payload["pull_request"]["merged"], true);
    assert_eq!(merged.payload["pull_request"]["state"], "closed");
    let sync = with("update", Some("abc")).expect("an event");
    assert_eq!(sync.before.as_deref(), Some("abc"));
    // The default types run on opened/synchronize/reopened, not on closed or edited.
    let f = EventFilter::default();
    assert!(yes(&matches(&sync, &f, Some(&[]))));
    assert!(!yes(&matches(&merged, &f, Some(&[]))));
}

#[test]
fn malformed_gitlab_payloads_name_the_field() {
    let push = load("gitlab", "push-event.json");
    let mr = load("gitlab", "merge-request-event.json");
    let without = |v: &Value, pointer: &str| {
        let mut v = v.clone();
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
        v.pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .expect("the parent is an object")
            .remove(key);
        v
    };
    let cases: &[(&str, Value, &str)] = &[
        ("Push Hook", without(&push, "/ref"), "ref"),
        ("Push Hook", without(&push, "/after"), "after"),
        ("Tag Push Hook", without(&push, "/ref"), "ref"),
        (
            "Merge Request Hook",
            without(&mr, "/object_attributes"),
            "object_attributes",
        ),
        (
            "Merge Request Hook",
            without(&mr, "/object_attributes/action"),
            "object_attributes.action",
        ),
        (
            "Merge Request Hook",
            without(&mr, "/object_attributes/iid"),
            "object_attributes.iid",
        ),
        (
            "Merge Request Hook",
            without(&mr, "/object_attributes/last_commit/id"),
            "object_attributes.last_commit.id",
        ),
        (
            "Merge Request Hook",
            without(&mr, "/object_attributes/target_branch"),
            "object_attributes.target_branch",
        ),
        ("Release Hook", json!({"action": "create"}), "tag"),
    ];
    for (header, payload, field) in cases {
        let err = normalize(Provider::Gitlab, header, payload.clone()).expect_err(field);
        assert_eq!(err.field(), Some(*field), "{header}: {err}");
    }
}

#[test]
fn gitea_and_gogs_known_deliveries() {
    let ev = event(Provider::Gitea, "push", "gitea", "push-event.json");
    assert_eq!(ev.provider, Provider::Gitea);
    assert_eq!(ev.git_ref.as_deref(), Some("refs/heads/master"));
    assert_eq!(
        ev.sha.as_deref(),
        Some("67b56589a45103f891bdee7c0546e5d40bc02001")
    );
    assert_eq!(ev.before, None, "a new branch");
    assert_eq!(ev.actor.as_deref(), Some("example"));
    assert_eq!(ev.repository.as_deref(), Some("example/example"));
    assert_eq!(ev.changed_paths, strs(&["example"]));
    assert_eq!(ev.payload["created"], true);
    assert_eq!(ev.payload["deleted"], false);
    assert!(ev.payload["compare"].is_string());

    let ev = event(
        Provider::Gitea,
        "pull_request",
        "gitea",
        "pull-request-event.json",
    );
    assert_eq!(ev.action.as_deref(), Some("opened"));
    assert_eq!(ev.number, Some(2));
    assert_eq!(
        ev.sha.as_deref(),
        Some("48e773f892a831faa47c0a160d1b7f0cd369ae2a")
    );
    assert_eq!(ev.base_ref.as_deref(), Some("master"));
    assert_eq!(ev.head_ref.as_deref(), Some("master"));
    assert_eq!(ev.fetch_ref.as_deref(), Some("refs/pull/2/head"));

    let mut sync = load("gitea", "pull-request-event.json");
    sync["action"] = json!("synchronized");
    let ev = normalize(Provider::Gitea, "pull_request", sync.clone())
        .expect("valid")
        .expect("an event");
    assert_eq!(ev.action.as_deref(), Some("synchronize"));
    assert_eq!(ev.payload["action"], "synchronize");

    let ev = event(Provider::Gitea, "release", "gitea", "release-event.json");
    assert_eq!(ev.action.as_deref(), Some("published"));
    assert_eq!(ev.git_ref.as_deref(), Some("refs/tags/example"));

    let ev = event(Provider::Gitea, "create", "gitea", "create-event.json");
    assert_eq!(ev.git_ref.as_deref(), Some("refs/heads/master"));
    assert_eq!(
        ev.sha.as_deref(),
        Some("67b56589a45103f891bdee7c0546e5d40bc02001")
    );

    let ev = event(Provider::Gitea, "delete", "gitea", "delete-event.json");
    assert_eq!(ev.git_ref.as_deref(), Some("refs/heads/master"));
    assert_eq!(ev.payload["ref"], "example3");

    // Gogs: commits without file lists, full refs in create/delete.
    let ev = event(Provider::Gitea, "push", "gogs", "push-event.json");
    assert_eq!(ev.git_ref.as_deref(), Some("refs/heads/develop"));
    assert_eq!(
        ev.sha.as_deref(),
        Some("bffeb74224043ba2feb48d137756c8a9331c449a")
    );
    assert_eq!(ev.actor.as_deref(), Some("unknwon"));
    assert_eq!(ev.changed_paths, None);
    let ev = event(Provider::Gitea, "create", "gogs", "create-event.json");
    assert_eq!(ev.git_ref.as_deref(), Some("refs/heads/feature-branch"));
    assert_eq!(ev.ref_name.as_deref(), Some("feature-branch"));
    let ev = event(Provider::Gitea, "release", "gogs", "release-event.json");
    assert_eq!(ev.git_ref.as_deref(), Some("refs/tags/v1.0.0"));
}

#[test]
fn gitea_cut_commit_lists_leave_files_to_git() {
    let mut p = load("gitea", "push-event.json");
    p["total_commits"] = json!(7);
    let ev = normalize(Provider::Gitea, "push", p.clone())
        .expect("valid")
        .expect("a push");
    assert_eq!(ev.changed_paths, None);
    let mut p = load("gitea", "push-event.json");
    let c = p["commits"][0].clone();
    p["commits"] = json!([c.clone(), c.clone(), c.clone(), c.clone(), c]);
    let ev = normalize(Provider::Gitea, "push", p.clone())
        .expect("valid")
        .expect("a push");
    assert_eq!(
        ev.changed_paths, None,
        "5 commits without a total may be cut"
    );
}

#[test]
fn github_forced_and_deleted_pushes() {
    let mut p = load("github", "push.go-playground.payload.json");
    p["forced"] = json!(true);
    let ev = normalize(Provider::Github, "push", p.clone())
        .expect("valid")
        .expect("a push");
    assert_eq!(ev.changed_paths, None, "a forced push may drop files");
    let mut p = load("github", "push.go-playground.payload.json");
    p["after"] = json!("0".repeat(40));
    p["deleted"] = json!(true);
    p["commits"] = json!([]);
    let ev = normalize(Provider::Github, "push", p.clone())
        .expect("valid")
        .expect("a push");
    assert!(ev.deleted);
    assert_eq!(ev.sha, None);
    assert_eq!(ev.git_ref.as_deref(), Some("refs/heads/master"));
}

/// Every corpus delivery with each of its fields (two levels deep) made null, a number or a
/// list: `normalize` answers, never panics, and an error names a field.
#[test]
fn damaged_deliveries_never_panic() {
    let mut deliveries: Vec<(Provider, String, Value)> = Vec::new();
    for entry in std::fs::read_dir(corpus("github")).expect("the GitHub corpus is there") {
        let name = entry
            .expect("an entry")
            .file_name()
            .into_string()
            .expect("UTF-8");
        if name.ends_with(".payload.json") {
            let header = name.split('.').next().expect("an event").to_owned();
            deliveries.push((Provider::Github, header, load("github", &name)));
        }
    }
    for (dir, provider) in [
        ("gitlab", Provider::Gitlab),
        ("gitea", Provider::Gitea),
        ("gogs", Provider::Gitea),
    ] {
        for (file, header) in cases(dir) {
            deliveries.push((provider, header, load(dir, &file)));
        }
    }
    let damage = [json!(null), json!(5), json!([])];
    let mut tried = 0;
    for (provider, header, payload) in &deliveries {
        let mut pointers = Vec::new();
        for (k, v) in payload.as_object().expect("an object") {
            pointers.push(format!("/{k}"));
            if let Some(inner) = v.as_object() {
                pointers.extend(inner.keys().map(|k2| format!("/{k}/{k2}")));
            }
        }
        for pointer in &pointers {
            for d in &damage {
                let mut p = payload.clone();
                *p.pointer_mut(pointer).expect("the field is there") = d.clone();
                tried += 1;
                if let Err(e) = normalize(*provider, header, p.clone()) {
                    assert!(e.field().is_some(), "{header} {pointer}={d}: {e}");
                }
            }
        }
    }
    assert!(tried > 500, "only {tried} damaged deliveries");
}

proptest::proptest! {
    /// A name is matched by itself (escaped), by `**`, and by `*` exactly when it has no `/`.
    #[test]
    fn names_match_themselves_and_the_wildcards(name in "[a-zA-Z0-9/._+?*!-]{0,40}") {
        let escaped: String = name
            .chars()
            .flat_map(|c| {
                let special = matches!(c, '*' | '?' | '+' | '[' | ']' | '!' | '\\');
                special.then_some('\\').into_iter().chain(std::iter::once(c))
            })
            .collect();
        let literal = Pattern::parse(&escaped).expect("an escaped name compiles");
        proptest::prop_assert!(literal.matches(&name));
        proptest::prop_assert!(Pattern::parse("**").expect("compiles").matches(&name));
        proptest::prop_assert_eq!(
            Pattern::parse("*").expect("compiles").matches(&name),
            !name.contains('/')
        );
    }
}
