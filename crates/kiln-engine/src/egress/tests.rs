use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn policy(hosts: &[&str], cidrs: &[&str]) -> EgressPolicy {
    let hosts: Vec<String> = hosts.iter().map(|s| (*s).to_owned()).collect();
    let cidrs: Vec<String> = cidrs.iter().map(|s| (*s).to_owned()).collect();
    EgressPolicy::from_config(&hosts, &cidrs).unwrap()
}

fn remote(scheme: Scheme, host: &str, port: u16) -> Parsed {
    Parsed::Remote {
        scheme,
        host: host.to_owned(),
        port,
    }
}

fn bad_url_reason(url: &str) -> String {
    match parse_url(url) {
        Err(EgressError::BadUrl { reason, .. }) => reason,
        other => panic!("{url}: expected BadUrl, got {other:?}"),
    }
}

#[test]
fn classify_knows_the_special_ranges() {
    let cases = [
        ("127.0.0.1", AddressClass::Loopback),
        ("127.255.0.9", AddressClass::Loopback),
        ("::1", AddressClass::Loopback),
        ("10.0.0.1", AddressClass::Private),
        ("172.16.0.1", AddressClass::Private),
        ("172.31.255.255", AddressClass::Private),
        ("192.168.1.1", AddressClass::Private),
        ("fd12:3456::1", AddressClass::Private),
        ("fc00::1", AddressClass::Private),
        ("fec0::1", AddressClass::Private),
        ("64:ff9b:1::1", AddressClass::Private),
        ("100.64.0.1", AddressClass::SharedCgnat),
        ("100.127.255.254", AddressClass::SharedCgnat),
        ("169.254.169.254", AddressClass::LinkLocal),
        ("fe80::1", AddressClass::LinkLocal),
        ("0.0.0.0", AddressClass::Unspecified),
        ("0.1.2.3", AddressClass::Unspecified),
        ("::", AddressClass::Unspecified),
        ("224.0.0.1", AddressClass::Multicast),
        ("239.255.255.250", AddressClass::Multicast),
        ("ff02::1", AddressClass::Multicast),
        ("192.0.2.1", AddressClass::Documentation),
        ("198.51.100.7", AddressClass::Documentation),
        ("203.0.113.9", AddressClass::Documentation),
        ("2001:db8::1", AddressClass::Documentation),
        ("3fff::1", AddressClass::Documentation),
        ("198.18.0.1", AddressClass::Reserved),
        ("240.0.0.1", AddressClass::Reserved),
        ("255.255.255.255", AddressClass::Reserved),
        ("192.0.0.8", AddressClass::Reserved),
        ("::7f00:1", AddressClass::Reserved),
        ("100::1", AddressClass::Reserved),
        ("2001::1", AddressClass::Reserved),
        // Embedded IPv4 addresses are judged as IPv4.
        ("::ffff:127.0.0.1", AddressClass::Loopback),
        ("::ffff:10.1.2.3", AddressClass::Private),
        ("::ffff:169.254.169.254", AddressClass::LinkLocal),
        ("64:ff9b::7f00:1", AddressClass::Loopback),
        ("64:ff9b::a9fe:a9fe", AddressClass::LinkLocal),
        ("2002:7f00:1::1", AddressClass::Loopback),
        ("2002:c0a8:101::1", AddressClass::Private),
        // Public.
        ("1.1.1.1", AddressClass::Public),
        ("140.82.121.4", AddressClass::Public),
        ("172.32.0.1", AddressClass::Public),
        ("100.128.0.1", AddressClass::Public),
        ("2606:4700:4700::1111", AddressClass::Public),
        ("::ffff:1.1.1.1", AddressClass::Public),
        ("64:ff9b::101:101", AddressClass::Public),
        ("2002:101:101::1", AddressClass::Public),
    ];
    for (addr, class) in cases {
        assert_eq!(classify(ip(addr)), class, "{addr}");
    }
}

#[test]
fn default_policy_allows_public_and_refuses_every_special_range() {
    let p = EgressPolicy::default();
    for addr in ["1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
        assert_eq!(p.check_addr("example.com", ip(addr)), Ok(()), "{addr}");
    }
    for (addr, class) in [
        ("127.0.0.1", AddressClass::Loopback),
        ("::1", AddressClass::Loopback),
        ("::ffff:127.0.0.1", AddressClass::Loopback),
        ("10.0.0.1", AddressClass::Private),
        ("fd00::1", AddressClass::Private),
        ("100.64.1.1", AddressClass::SharedCgnat),
        ("169.254.169.254", AddressClass::LinkLocal),
        ("fe80::1", AddressClass::LinkLocal),
        ("0.0.0.0", AddressClass::Unspecified),
        ("::", AddressClass::Unspecified),
        ("224.0.0.1", AddressClass::Multicast),
        ("203.0.113.1", AddressClass::Documentation),
        ("2001:db8::5", AddressClass::Documentation),
    ] {
        assert_eq!(
            p.check_addr("example.com", ip(addr)),
            Err(Refusal::Range(class)),
            "{addr}"
        );
    }
}

#[test]
fn allow_loopback_admits_loopback_only() {
    let p = EgressPolicy {
        allow_loopback: true,
        ..EgressPolicy::default()
    };
    for addr in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
        assert_eq!(p.check_addr("localhost", ip(addr)), Ok(()), "{addr}");
    }
    for addr in ["10.0.0.1", "169.254.169.254", "0.0.0.0", "fd00::1"] {
        assert!(p.check_addr("x", ip(addr)).is_err(), "{addr}");
    }
}

#[test]
fn allow_private_admits_private_and_cgnat_but_not_link_local_or_loopback() {
    let p = EgressPolicy {
        allow_private: true,
        ..EgressPolicy::default()
    };
    for addr in [
        "10.9.8.7",
        "172.20.0.1",
        "192.168.0.10",
        "100.100.100.100",
        "fd00::1",
        "::ffff:192.168.0.1",
    ] {
        assert_eq!(p.check_addr("git.internal", ip(addr)), Ok(()), "{addr}");
    }
    assert_eq!(
        p.check_addr("x", ip("169.254.169.254")),
        Err(Refusal::Range(AddressClass::LinkLocal))
    );
    assert_eq!(
        p.check_addr("x", ip("127.0.0.1")),
        Err(Refusal::Range(AddressClass::Loopback))
    );
}

#[test]
fn a_cidr_entry_admits_its_range_and_only_that() {
    let p = policy(&[], &["10.1.0.0/16", "fd00:1::/32", "169.254.169.254/32"]);
    assert_eq!(p.check_addr("x", ip("10.1.200.3")), Ok(()));
    assert_eq!(
        p.check_addr("x", ip("10.2.0.1")),
        Err(Refusal::Range(AddressClass::Private))
    );
    assert_eq!(p.check_addr("x", ip("fd00:1::9")), Ok(()));
    assert!(p.check_addr("x", ip("fd00:2::9")).is_err());
    // Naming the metadata address is the only way to reach it.
    assert_eq!(p.check_addr("x", ip("169.254.169.254")), Ok(()));
    assert!(p.check_addr("x", ip("169.254.169.253")).is_err());
    // A mapped address is judged as the IPv4 address it carries.
    assert_eq!(p.check_addr("x", ip("::ffff:10.1.0.1")), Ok(()));
    // With no host list, public addresses stay allowed.
    assert_eq!(p.check_addr("example.com", ip("1.1.1.1")), Ok(()));
}

#[test]
fn a_host_list_restricts_public_hosts_to_the_listed_ones() {
    let p = policy(&["github.com", "*.example.org"], &["203.0.113.0/24"]);
    assert_eq!(p.check_addr("github.com", ip("140.82.121.4")), Ok(()));
    assert_eq!(p.check_addr("GitHub.COM.", ip("140.82.121.4")), Ok(()));
    assert_eq!(p.check_addr("git.example.org", ip("1.2.3.4")), Ok(()));
    assert_eq!(p.check_addr("a.b.example.org", ip("1.2.3.4")), Ok(()));
    // A wildcard covers names below it, not the name itself, nor look-alikes.
    assert_eq!(
        p.check_addr("example.org", ip("1.2.3.4")),
        Err(Refusal::NotListed)
    );
    assert_eq!(
        p.check_addr("evilexample.org", ip("1.2.3.4")),
        Err(Refusal::NotListed)
    );
    assert_eq!(
        p.check_addr("gitlab.com", ip("1.2.3.4")),
        Err(Refusal::NotListed)
    );
    // A listed CIDR admits an unlisted name (and even a documentation range).
    assert_eq!(p.check_addr("anything", ip("203.0.113.5")), Ok(()));
    // A listed name that resolves to a special address is still refused.
    assert_eq!(
        p.check_addr("github.com", ip("127.0.0.1")),
        Err(Refusal::Range(AddressClass::Loopback))
    );
    assert_eq!(
        p.check_addr("git.example.org", ip("169.254.169.254")),
        Err(Refusal::Range(AddressClass::LinkLocal))
    );
}

#[test]
fn from_config_keeps_entries_and_takes_addresses_in_the_host_list_as_cidrs() {
    let p = policy(
        &["Git.Example.com.", "*.corp.example", "192.0.2.7", "::1"],
        &[" 10.0.0.0/8", "10.1.2.3/16", "fd00::1"],
    );
    assert_eq!(p.hosts(), vec!["git.example.com", "*.corp.example"]);
    let cidrs: Vec<String> = p.cidrs().iter().map(ToString::to_string).collect();
    assert_eq!(
        cidrs,
        vec![
            "192.0.2.7/32",
            "::1/128",
            "10.0.0.0/8",
            "10.1.0.0/16",
            "fd00::1/128"
        ]
    );
    assert_eq!(p.check_addr("whatever", ip("192.0.2.7")), Ok(()));
    assert_eq!(p.check_addr("localhost", ip("::1")), Ok(()));
}

#[test]
fn from_config_names_the_bad_entry() {
    for host in [
        "https://github.com",
        "github.com:443",
        "github.com/org",
        "*",
        "a.*.example.com",
        "*example.com",
        "foo..com",
        "-x.example.com",
        "",
        "bücher.example",
        "127.1",
    ] {
        let err = EgressPolicy::from_config(&[host.to_owned()], &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, EgressError::BadEntry { entry, .. } if entry == host),
            "{host}: {err:?}"
        );
        assert!(msg.contains(&format!("`{host}`")), "{msg}");
        assert!(msg.starts_with("failed to "), "{msg}");
    }
    for cidr in ["10.0.0.0/33", "10.0.0/8", "example.com", "fd00::/129", ""] {
        let err = EgressPolicy::from_config(&[], &[cidr.to_owned()]).unwrap_err();
        assert!(
            matches!(&err, EgressError::BadEntry { entry, .. } if entry == cidr),
            "{cidr}: {err:?}"
        );
    }
}

#[test]
fn parses_scheme_urls_with_userinfo_and_ports() {
    let cases = [
        (
            "https://github.com/o/r.git",
            remote(Scheme::Https, "github.com", 443),
        ),
        (
            "HTTPS://user:tok%40en@Git.Example.com:8443/o/r",
            remote(Scheme::Https, "Git.Example.com", 8443),
        ),
        (
            "http://127.0.0.1:8080/r.git",
            remote(Scheme::Http, "127.0.0.1", 8080),
        ),
        ("http://[::1]:9/r", remote(Scheme::Http, "::1", 9)),
        ("https://[::1]/r", remote(Scheme::Https, "::1", 443)),
        (
            "ssh://git@example.com:2222/o/r.git",
            remote(Scheme::Ssh, "example.com", 2222),
        ),
        (
            "ssh://example.com/~u/r",
            remote(Scheme::Ssh, "example.com", 22),
        ),
        (
            "git+ssh://git@example.com/r",
            remote(Scheme::Ssh, "example.com", 22),
        ),
        (
            "ssh+git://example.com:/r",
            remote(Scheme::Ssh, "example.com", 22),
        ),
        (
            "git://example.com/r.git",
            remote(Scheme::Git, "example.com", 9418),
        ),
        (
            "git://127.0.0.1:9419/r",
            remote(Scheme::Git, "127.0.0.1", 9419),
        ),
        (
            "https://my_host.internal/r",
            remote(Scheme::Https, "my_host.internal", 443),
        ),
    ];
    for (url, want) in cases {
        assert_eq!(parse_url(url).unwrap(), want, "{url}");
    }
}

#[test]
fn parses_scp_like_urls_as_ssh() {
    let cases = [
        (
            "git@github.com:o/r.git",
            remote(Scheme::Ssh, "github.com", 22),
        ),
        ("example.com:r.git", remote(Scheme::Ssh, "example.com", 22)),
        ("[::1]:r.git", remote(Scheme::Ssh, "::1", 22)),
        ("git@[::1]:r.git", remote(Scheme::Ssh, "::1", 22)),
        (
            "[git@example.com:2222]:r.git",
            remote(Scheme::Ssh, "example.com", 2222),
        ),
        ("u@127.0.0.1:/srv/r", remote(Scheme::Ssh, "127.0.0.1", 22)),
    ];
    for (url, want) in cases {
        assert_eq!(parse_url(url).unwrap(), want, "{url}");
    }
}

#[test]
fn paths_and_file_urls_are_local() {
    let cases = [
        ("/srv/repos/r.git", "/srv/repos/r.git"),
        ("./r", "./r"),
        ("r.git", "r.git"),
        ("../a:b", "../a:b"),
        ("file:///srv/r.git", "/srv/r.git"),
        ("FILE://localhost/srv/r", "/srv/r"),
    ];
    for (url, path) in cases {
        assert_eq!(
            parse_url(url).unwrap(),
            Parsed::Local(PathBuf::from(path)),
            "{url}"
        );
    }
    assert!(bad_url_reason("file://other-host/srv/r").contains("other-host"));
    assert!(bad_url_reason("file://").contains("absolute path"));
}

#[test]
fn remote_helpers_and_other_schemes_are_refused() {
    for (url, transport) in [
        ("ext::sh -c touch% /tmp/pwned", "ext::"),
        ("fd::3", "fd::"),
        ("ext::ssh", "ext::"),
        ("persistent-https::x", "persistent-https::"),
        ("ftp://example.com/r", "ftp://"),
        ("ftps://example.com/r", "ftps://"),
        ("testgit://x/r", "testgit://"),
    ] {
        match parse_url(url) {
            Err(EgressError::Transport { transport: t, .. }) => assert_eq!(t, transport, "{url}"),
            // White space is refused before the transport is looked at.
            Err(EgressError::BadUrl { .. }) if url.contains(' ') => {}
            other => panic!("{url}: {other:?}"),
        }
    }
    let err = parse_url("fd::3").unwrap_err().to_string();
    assert!(
        err.contains("`fd::`") && err.contains("not allowed"),
        "{err}"
    );
}

#[test]
fn urls_parsers_disagree_on_are_refused() {
    for url in [
        "http://evil.example\\@127.0.0.1/r",
        "http://a@b@127.0.0.1/r",
        "http://127.1/r",
        "http://2130706433/r",
        "http://0x7f000001/r",
        "http://0x7f.1/r",
        "https://bücher.example/r",
        "https://ex%61mple.com/r",
        "https://example.com?x@127.0.0.1/r",
        "https://example.com#@127.0.0.1/r",
        "http://[fe80::1%25eth0]/r",
        "http://[::1/r",
        "http://[example.com]/r",
        "https://example.com:0/r",
        "https://example.com:99999/r",
        "https://example.com:8x/r",
        "https:///r",
        "ssh://-oProxyCommand=touch%20x/r",
        "-oProxyCommand=x:r",
        "https://example.com/a b",
        "https://example.com/\n",
        "",
    ] {
        let _ = bad_url_reason(url);
    }
}

#[tokio::test]
async fn check_url_resolves_names_and_refuses_loopback_by_default() {
    let p = EgressPolicy::default();
    for url in [
        "https://127.0.0.1/r.git",
        "http://localhost:8080/r.git",
        "https://[::1]/r",
        "https://[::ffff:127.0.0.1]/r",
        "git@127.0.0.1:r.git",
        "git://127.0.0.1:9418/r",
    ] {
        match p.check_url(url).await {
            Err(EgressError::Refused {
                reason: Refusal::Range(AddressClass::Loopback),
                ..
            }) => {}
            other => panic!("{url}: {other:?}"),
        }
    }
    let err = p
        .check_url("http://localhost:8080/r.git")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("localhost") && err.contains("loopback") && err.contains("allow_loopback"),
        "{err}"
    );
}

#[tokio::test]
async fn check_url_with_loopback_allowed_returns_the_checked_endpoint() {
    let p = EgressPolicy {
        allow_loopback: true,
        ..EgressPolicy::default()
    };
    let Target::Remote(ep) = p.check_url("http://localhost:8080/r.git").await.unwrap() else {
        panic!("remote expected");
    };
    assert_eq!(
        (ep.scheme, ep.host.as_str(), ep.port),
        (Scheme::Http, "localhost", 8080)
    );
    assert!(!ep.host_is_ip());
    assert!(!ep.addrs.is_empty());
    assert!(ep.addrs.iter().all(|a| a.is_loopback()), "{:?}", ep.addrs);

    let Target::Remote(ep) = p.check_url("git@[::1]:r.git").await.unwrap() else {
        panic!("remote expected");
    };
    assert_eq!((ep.scheme, ep.port), (Scheme::Ssh, 22));
    assert_eq!(ep.addrs, vec![ip("::1")]);
    assert!(ep.host_is_ip());
    // Loopback is allowed, local paths are not: they are a separate flag.
    assert!(matches!(
        p.check_url("file:///srv/r.git").await,
        Err(EgressError::LocalRefused { .. })
    ));
}

#[tokio::test]
async fn local_paths_need_their_own_flag() {
    let p = EgressPolicy::default();
    for url in ["file:///srv/r.git", "/srv/r.git", "r.git"] {
        assert!(
            matches!(
                p.check_url(url).await,
                Err(EgressError::LocalRefused { .. })
            ),
            "{url}"
        );
    }
    let p = EgressPolicy {
        allow_local_paths: true,
        ..EgressPolicy::default()
    };
    assert_eq!(
        p.check_url("file:///srv/r.git").await.unwrap(),
        Target::Local {
            path: PathBuf::from("/srv/r.git")
        }
    );
    // Local paths do not open the network's loopback.
    assert!(matches!(
        p.check_url("http://127.0.0.1/r").await,
        Err(EgressError::Refused { .. })
    ));
}

#[tokio::test]
async fn a_host_list_refuses_unlisted_public_addresses_and_flags_still_admit_loopback() {
    let mut p = policy(&["github.com"], &[]);
    match p.check_url("https://1.1.1.1/r").await {
        Err(EgressError::Refused {
            reason: Refusal::NotListed,
            addr,
            ..
        }) => assert_eq!(addr, ip("1.1.1.1")),
        other => panic!("{other:?}"),
    }
    // The flags work like CIDR entries for their ranges, host list or not.
    p.allow_loopback = true;
    assert!(p.check_url("http://localhost:1/r").await.is_ok());
}

#[tokio::test]
async fn check_host_checks_every_address_of_a_name() {
    let p = EgressPolicy::default();
    let err = p.check_host("localhost", 443).await.unwrap_err();
    match &err {
        EgressError::Refused { target, host, .. } => {
            assert_eq!(target, "localhost:443");
            assert_eq!(host, "localhost");
        }
        other => panic!("{other:?}"),
    }
    let p = EgressPolicy {
        allow_loopback: true,
        ..EgressPolicy::default()
    };
    assert!(p.check_host("localhost", 443).await.is_ok());
    assert!(matches!(
        p.check_host("kiln-no-such-host.invalid", 443).await,
        Err(EgressError::Resolve { .. })
    ));
}

#[tokio::test]
async fn refusals_never_show_credentials() {
    let p = EgressPolicy::default();
    for url in [
        "https://user:s3cretpass@127.0.0.1/r.git",
        "https://ghp_tokentokentoken@127.0.0.1/r.git",
    ] {
        let err = p.check_url(url).await.unwrap_err().to_string();
        assert!(!err.contains("s3cret") && !err.contains("ghp_"), "{err}");
        assert!(err.contains("https://***@127.0.0.1/r.git"), "{err}");
    }
    let err = parse_url("https://user:s3cretpass@127.1/r")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn redact_url_hides_http_userinfo_and_other_passwords() {
    let cases = [
        ("https://user:pass@host/r", "https://***@host/r"),
        ("https://token@host/r", "https://***@host/r"),
        ("http://u:p@host:8080/r", "http://***@host:8080/r"),
        ("ssh://git@host/r", "ssh://git@host/r"),
        ("ssh://git:pw@host/r", "ssh://git:***@host/r"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        ("https://host/r", "https://host/r"),
        ("/srv/r", "/srv/r"),
        // Malformed: everything up to the last `@` may be a secret.
        ("https://u:pa/ss@host/r", "https://***@host/r"),
    ];
    for (url, want) in cases {
        assert_eq!(redact_url(url), want, "{url}");
    }
}

#[test]
fn redact_in_removes_credentials_from_free_text() {
    let url = "https://bob:hunter2%21x@example.com/r.git";
    let text = "fatal: unable to access 'https://bob:hunter2%21x@example.com/r.git/': \
                auth hunter2!x hunter2%21x for bob:hunter2%21x@example.com";
    let out = redact_in(url, text);
    assert!(!out.contains("hunter2"), "{out}");
    assert!(out.contains("https://***@example.com/r.git"), "{out}");
    // An ssh username is not a secret; the text is left alone when there is nothing to hide.
    assert_eq!(
        redact_in("ssh://git@example.com/r", "git@example.com: denied"),
        "git@example.com: denied"
    );
}
