//! The egress policy: the one decision every outbound connection kiln makes itself (git
//! fetches, watches, notifications, OIDC) goes through before it connects (DESIGN.md,
//! "Security model").
//!
//! The rules, in order, for every address a host resolves to:
//! 1. an address inside a CIDR entry of the allow-list passes;
//! 2. a loopback address passes only with [`EgressPolicy::allow_loopback`], a private one
//!    (RFC 1918, IPv6 ULA and site-local, CGNAT 100.64/10, local-use NAT64) only with
//!    [`EgressPolicy::allow_private`]; the flags work like CIDR entries for those ranges;
//! 3. any other special address — unspecified, link-local (169.254.169.254, the cloud
//!    metadata service, is one), multicast, documentation, benchmarking, reserved — never
//!    passes unless a CIDR entry names it;
//! 4. a public address passes when the host list is empty (the default: any public host),
//!    or when the host name is on the list (`git.example.com`, `*.example.com`).
//!
//! A host passes only when *every* address it resolves to passes, so a name that resolves to
//! 127.0.0.1 (`localhost`, or a hostile DNS record) is loopback. IPv4-mapped IPv6 addresses
//! (`::ffff:127.0.0.1`) are judged as the IPv4 address they carry, and so are NAT64
//! (`64:ff9b::/96`) and 6to4 (`2002::/16`) addresses.
//!
//! Local sources — `file://` URLs and plain paths — are not network connections but reach
//! the server's own disk; they pass only with [`EgressPolicy::allow_local_paths`], a flag of
//! their own (a server may serve projects from local folders without opening loopback).
//!
//! The policy resolves a name and the caller connects afterwards, so a caller that resolves
//! again (the git CLI does) must pin the checked addresses where it can: see
//! [`crate::source`]. URLs are parsed strictly (no backslashes, no second `@`, no
//! percent-encoded or non-ASCII host names, no short forms of IPv4 such as `127.1`) so that
//! kiln and git or curl never disagree about which host a URL names.
//!
//! Not here: connecting, HTTP clients, configuration files (the server maps its
//! configuration onto [`EgressPolicy::from_config`]).

pub mod proxy;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use AddressClass as C;

/// How long resolving one host name may take before the check gives up.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(15);

/// Which outbound connections kiln may make. See the module documentation for the rules.
///
/// The default policy allows every public host, refuses loopback, private and every other
/// special address, and refuses local paths.
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    hosts: Vec<HostPattern>,
    cidrs: Vec<IpNet>,
    /// Admit loopback addresses (127.0.0.0/8, ::1). Meant for tests; default false.
    pub allow_loopback: bool,
    /// Admit private addresses (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7,
    /// fec0::/10, 64:ff9b:1::/48). Default false.
    pub allow_private: bool,
    /// Admit `file://` URLs and plain paths (the server's own disk). Default false.
    pub allow_local_paths: bool,
}

/// One entry of the host list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    /// `git.example.com`: that name only.
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: any name below it, not the name itself.
    Below(String),
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        let host = normalize_host(host);
        match self {
            Self::Exact(name) => host == *name,
            Self::Below(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Below(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// Host names compare case-insensitively and without a trailing dot.
fn normalize_host(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// The transport of a remote URL, as git names it in `protocol.<name>.allow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
    /// `ssh://`, `git+ssh://`, `ssh+git://` and scp-like `user@host:path`.
    Ssh,
    /// `git://`, git's own unauthenticated protocol.
    Git,
}

impl Scheme {
    /// The port a URL without one connects to.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Https => 443,
            Self::Http => 80,
            Self::Ssh => 22,
            Self::Git => 9418,
        }
    }

    /// git's name for the transport (`protocol.<name>.allow`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Https => "https",
            Self::Http => "http",
            Self::Ssh => "ssh",
            Self::Git => "git",
        }
    }
}

/// What a URL that passed the policy points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A `file://` URL or a plain path, as written (relative paths stay relative).
    Local { path: PathBuf },
    /// A network endpoint and the addresses that were checked; a caller that can should
    /// connect to these and no others.
    Remote(Endpoint),
}

/// A host and port that passed the policy, with every address it resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// The host as written in the URL (an IPv6 address without its brackets).
    pub host: String,
    pub port: u16,
    /// Every address `host` resolved to, each one checked; never empty.
    pub addrs: Vec<IpAddr>,
}

impl Endpoint {
    /// Whether the URL named an address rather than a host name.
    pub fn host_is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }
}

/// The kinds of address the policy tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    /// Anything not listed below.
    Public,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, fc00::/7 (ULA), fec0::/10, 64:ff9b:1::/48.
    Private,
    /// 100.64.0.0/10, carrier-grade NAT's shared address space (admitted with private ones).
    SharedCgnat,
    /// 169.254.0.0/16 (cloud metadata services live here), fe80::/10.
    LinkLocal,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// IETF protocol assignments, benchmarking (198.18/15), 240/4 and broadcast, 6to4 relay,
    /// IPv4-compatible IPv6, discard-only (100::/64), Teredo and other 2001::/23 blocks,
    /// SRv6 SIDs (5f00::/16).
    Reserved,
}

impl AddressClass {
    fn describe(self) -> &'static str {
        match self {
            Self::Public => "a public address",
            Self::Loopback => "a loopback address (allow_loopback admits it)",
            Self::Private => "a private address (allow_private or a CIDR entry admits it)",
            Self::SharedCgnat => {
                "a carrier-grade NAT address (allow_private or a CIDR entry admits it)"
            }
            Self::LinkLocal => "a link-local address (only a CIDR entry admits it)",
            Self::Unspecified => "the unspecified address (only a CIDR entry admits it)",
            Self::Multicast => "a multicast address (only a CIDR entry admits it)",
            Self::Documentation => "a documentation address (only a CIDR entry admits it)",
            Self::Reserved => "a reserved address (only a CIDR entry admits it)",
        }
    }
}

/// Why the policy refused an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The address is special and nothing admits its range.
    Range(AddressClass),
    /// The address is public but the host is not on the host list (and no CIDR admits it).
    NotListed,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Range(class) => f.write_str(class.describe()),
            Self::NotListed => f.write_str("a host that is not on the egress allow-list"),
        }
    }
}

/// Why a URL or a configuration entry did not pass. URLs in messages have their credentials
/// redacted.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// A configuration entry is unusable; names the entry.
    #[error("failed to read the egress allow-list entry `{entry}`: {reason}")]
    BadEntry { entry: String, reason: String },
    /// The URL does not parse (strictly).
    #[error("failed to understand the repository URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    /// A scheme or git remote-helper transport kiln does not allow (`ext::`, `fd::`, `ftp://`).
    #[error(
        "failed to accept `{url}`: the transport `{transport}` is not allowed; use https://, http://, ssh://, git://, user@host:path, file:// or a path"
    )]
    Transport { url: String, transport: String },
    /// A `file://` URL or a path, and the policy does not allow local paths.
    #[error(
        "failed to accept `{url}`: the egress policy refuses local paths and file:// URLs (allow_local_paths admits them)"
    )]
    LocalRefused { url: String },
    /// The host name did not resolve (or resolved to nothing, or too slowly).
    #[error("failed to resolve the host `{host}`: {reason}")]
    Resolve { host: String, reason: String },
    /// The policy refuses one of the addresses the host resolves to.
    #[error("failed to reach {target}: the egress policy refuses {host} ({addr}), {reason}")]
    Refused {
        /// The URL (redacted) or `host:port` that was checked.
        target: String,
        host: String,
        addr: IpAddr,
        reason: Refusal,
    },
}

impl EgressPolicy {
    /// The policy from configuration: host names (`git.example.com`, `*.example.com`; an IP
    /// address is taken as a one-address CIDR) and CIDRs (`10.1.0.0/16`, `fd00::/8`, or a
    /// bare address). Flags start false; set the public fields afterwards.
    pub fn from_config(hosts: &[String], cidrs: &[String]) -> Result<Self, EgressError> {
        let mut policy = Self::default();
        for entry in hosts {
            let bad = |reason: &str| EgressError::BadEntry {
                entry: entry.clone(),
                reason: reason.to_owned(),
            };
            let trimmed = entry.trim();
            if let Ok(ip) = trimmed.parse::<IpAddr>() {
                policy.cidrs.push(IpNet::from(ip.to_canonical()));
                continue;
            }
            let (wild, name) = match trimmed.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, trimmed),
            };
            if name.contains('*') {
                return Err(bad(
                    "a wildcard may only be the whole first label, as in *.example.com",
                ));
            }
            check_host_name(name).map_err(|reason| {
                bad(&format!(
                    "{reason}; give a host name such as git.example.com or *.example.com, without scheme, port or path"
                ))
            })?;
            let name = normalize_host(name);
            policy.hosts.push(if wild {
                HostPattern::Below(format!(".{name}"))
            } else {
                HostPattern::Exact(name)
            });
        }
        for entry in cidrs {
            let trimmed = entry.trim();
            let net = match trimmed.parse::<IpNet>() {
                Ok(net) => net.trunc(),
                Err(_) => match trimmed.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => {
                        return Err(EgressError::BadEntry {
                            entry: entry.clone(),
                            reason: "not a CIDR such as 10.1.0.0/16 or fd00::/8, nor an IP address"
                                .to_owned(),
                        });
                    }
                },
            };
            policy.cidrs.push(net);
        }
        Ok(policy)
    }

    /// The host list as configured (`*.example.com` for wildcards).
    pub fn hosts(&self) -> Vec<String> {
        self.hosts.iter().map(ToString::to_string).collect()
    }

    /// The CIDR list, host entries that were IP addresses included.
    pub fn cidrs(&self) -> &[IpNet] {
        &self.cidrs
    }

    /// Decide one address that `host` resolved to. Pure: no resolution, no I/O.
    pub fn check_addr(&self, host: &str, addr: IpAddr) -> Result<(), Refusal> {
        let addr = addr.to_canonical();
        if self.cidrs.iter().any(|net| net.contains(&addr)) {
            return Ok(());
        }
        match classify(addr) {
            AddressClass::Loopback if self.allow_loopback => Ok(()),
            AddressClass::Private | AddressClass::SharedCgnat if self.allow_private => Ok(()),
            AddressClass::Public => {
                if self.hosts.is_empty() || self.hosts.iter().any(|p| p.matches(host)) {
                    Ok(())
                } else {
                    Err(Refusal::NotListed)
                }
            }
            class => Err(Refusal::Range(class)),
        }
    }

    /// Resolve `host` and check every address it resolves to; returns them all. For HTTP
    /// clients (watches, notifications) that connect to a host and port rather than a git URL.
    pub async fn check_host(&self, host: &str, port: u16) -> Result<Vec<IpAddr>, EgressError> {
        self.check_resolved(host, port, &format!("{host}:{port}"))
            .await
    }

    /// Parse a repository URL, resolve its host and check every address (see the module
    /// documentation); for a local path, check that local paths are allowed.
    ///
    /// Accepted: `https://`, `http://`, `ssh://` (also `git+ssh://`, `ssh+git://`),
    /// `git://`, scp-like `[user@]host:path`, `file://` and plain paths. Refused with
    /// [`EgressError::Transport`]: git's remote helpers (`ext::`, `fd::`, any `name::`) and
    /// other schemes.
    pub async fn check_url(&self, url: &str) -> Result<Target, EgressError> {
        match parse_url(url)? {
            Parsed::Local(path) => {
                if self.allow_local_paths {
                    Ok(Target::Local { path })
                } else {
                    Err(EgressError::LocalRefused {
                        url: redact_url(url),
                    })
                }
            }
            Parsed::Remote { scheme, host, port } => {
                let addrs = self.check_resolved(&host, port, &redact_url(url)).await?;
                Ok(Target::Remote(Endpoint {
                    scheme,
                    host,
                    port,
                    addrs,
                }))
            }
        }
    }

    async fn check_resolved(
        &self,
        host: &str,
        port: u16,
        target: &str,
    ) -> Result<Vec<IpAddr>, EgressError> {
        let addrs = resolve(host, port).await?;
        for &addr in &addrs {
            self.check_addr(host, addr)
                .map_err(|reason| EgressError::Refused {
                    target: target.to_owned(),
                    host: host.to_owned(),
                    addr,
                    reason,
                })?;
        }
        tracing::debug!(host, port, addrs = ?addrs, "egress allowed");
        Ok(addrs)
    }
}

/// Every address of `host` (an address literal resolves to itself), without duplicates.
async fn resolve(host: &str, port: u16) -> Result<Vec<IpAddr>, EgressError> {
    let fail = |reason: String| EgressError::Resolve {
        host: host.to_owned(),
        reason,
    };
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| fail(format!("no answer within {} s", RESOLVE_TIMEOUT.as_secs())))?
        .map_err(|e| fail(e.to_string()))?;
    let mut addrs: Vec<IpAddr> = Vec::new();
    for sa in found {
        if !addrs.contains(&sa.ip()) {
            addrs.push(sa.ip());
        }
    }
    if addrs.is_empty() {
        return Err(fail("it has no address".to_owned()));
    }
    Ok(addrs)
}

/// The class of an address; IPv4-mapped, NAT64 and 6to4 IPv6 addresses are judged by the
/// IPv4 address they carry.
pub fn classify(addr: IpAddr) -> AddressClass {
    match addr.to_canonical() {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// IPv4 special ranges (IANA special-purpose registry), as (network, prefix length, class).
const V4_RANGES: [([u8; 4], u32, AddressClass); 16] = [
    ([0, 0, 0, 0], 8, C::Unspecified),
    ([10, 0, 0, 0], 8, C::Private),
    ([100, 64, 0, 0], 10, C::SharedCgnat),
    ([127, 0, 0, 0], 8, C::Loopback),
    ([169, 254, 0, 0], 16, C::LinkLocal),
    ([172, 16, 0, 0], 12, C::Private),
    ([192, 0, 0, 0], 24, C::Reserved),
    ([192, 0, 2, 0], 24, C::Documentation),
    ([192, 88, 99, 0], 24, C::Reserved),
    ([192, 168, 0, 0], 16, C::Private),
    ([198, 18, 0, 0], 15, C::Reserved),
    ([198, 51, 100, 0], 24, C::Documentation),
    ([203, 0, 113, 0], 24, C::Documentation),
    ([224, 0, 0, 0], 4, C::Multicast),
    ([240, 0, 0, 0], 4, C::Reserved),
    // 255.255.255.255 is inside 240/4; listed for the reader.
    ([255, 255, 255, 255], 32, C::Reserved),
];

/// IPv6 special ranges, most specific first where they nest. IPv4-mapped (`::ffff:0:0/96`),
/// NAT64 and 6to4 addresses are judged by their IPv4 address before this table.
const V6_RANGES: [(u128, u32, AddressClass); 13] = [
    (0, 128, C::Unspecified),
    (1, 128, C::Loopback),
    // IPv4-compatible (deprecated): nothing routes these.
    (0, 96, C::Reserved),
    (0x0064_ff9b_0001_u128 << 80, 48, C::Private),
    (0x0100_u128 << 112, 64, C::Reserved),
    (0x2001_0db8_u128 << 96, 32, C::Documentation),
    (0x2001_u128 << 112, 23, C::Reserved),
    (0x3fff_u128 << 112, 20, C::Documentation),
    (0x5f00_u128 << 112, 16, C::Reserved),
    (0xfc00_u128 << 112, 7, C::Private),
    (0xfe80_u128 << 112, 10, C::LinkLocal),
    (0xfec0_u128 << 112, 10, C::Private),
    (0xff00_u128 << 112, 8, C::Multicast),
];

fn classify_v4(addr: Ipv4Addr) -> AddressClass {
    let bits = u32::from(addr);
    V4_RANGES
        .iter()
        .find(|(net, len, _)| bits & mask32(*len) == u32::from_be_bytes(*net))
        .map_or(C::Public, |(_, _, class)| *class)
}

fn classify_v6(addr: Ipv6Addr) -> AddressClass {
    let bits = u128::from(addr);
    // Translated addresses carry an IPv4 address: judge that one.
    if bits & mask128(96) == 0x0064_ff9b_u128 << 96 {
        return classify_v4(Ipv4Addr::from((bits & 0xffff_ffff) as u32));
    }
    if bits >> 112 == 0x2002 {
        return classify_v4(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    V6_RANGES
        .iter()
        .find(|(net, len, _)| bits & mask128(*len) == *net)
        .map_or(C::Public, |(_, _, class)| *class)
}

fn mask32(len: u32) -> u32 {
    u32::MAX.checked_shl(32 - len).unwrap_or(0)
}

fn mask128(len: u32) -> u128 {
    u128::MAX.checked_shl(128 - len).unwrap_or(0)
}

/// A URL taken apart, before resolution.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Local(PathBuf),
    Remote {
        scheme: Scheme,
        host: String,
        port: u16,
    },
}

/// Parse a repository URL the way git decides between its forms, but strictly.
fn parse_url(url: &str) -> Result<Parsed, EgressError> {
    let bad = |reason: &str| EgressError::BadUrl {
        url: redact_url(url),
        reason: reason.to_owned(),
    };
    if url.is_empty() {
        return Err(bad("it is empty"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains white space or control characters"));
    }
    if url.starts_with('-') {
        return Err(bad("it starts with `-`, which git would read as an option"));
    }
    // git's `<transport>::<address>` form runs a remote helper (`ext::` runs any command).
    let name_len = url
        .char_indices()
        .find(|&(i, c)| {
            !(c.is_ascii_alphabetic() || (i > 0 && (c.is_ascii_digit() || "+.-".contains(c))))
        })
        .map_or(url.len(), |(i, _)| i);
    if name_len > 0 && url[name_len..].starts_with("::") {
        return Err(EgressError::Transport {
            url: redact_url(url),
            transport: format!("{}::", &url[..name_len]),
        });
    }
    if name_len > 0 && url[name_len..].starts_with("://") {
        let rest = &url[name_len + 3..];
        let scheme = match url[..name_len].to_ascii_lowercase().as_str() {
            "https" => Scheme::Https,
            "http" => Scheme::Http,
            "ssh" | "git+ssh" | "ssh+git" => Scheme::Ssh,
            "git" => Scheme::Git,
            "file" => return parse_file_url(url, rest),
            other => {
                return Err(EgressError::Transport {
                    url: redact_url(url),
                    transport: format!("{other}://"),
                });
            }
        };
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        return parse_authority(authority, scheme).map_err(|reason| bad(&reason));
    }
    // git: no colon, or a slash before the first colon, is a path; anything else is scp-like.
    match (url.find(':'), url.find('/')) {
        (None, _) => Ok(Parsed::Local(PathBuf::from(url))),
        (Some(colon), Some(slash)) if slash < colon => Ok(Parsed::Local(PathBuf::from(url))),
        _ => parse_scp(url).map_err(|reason| bad(&reason)),
    }
}

fn parse_file_url(url: &str, rest: &str) -> Result<Parsed, EgressError> {
    let slash = rest.find('/').ok_or_else(|| EgressError::BadUrl {
        url: redact_url(url),
        reason: "a file:// URL needs an absolute path, as in file:///srv/repo.git".to_owned(),
    })?;
    let host = &rest[..slash];
    if !(host.is_empty() || host.eq_ignore_ascii_case("localhost")) {
        return Err(EgressError::BadUrl {
            url: redact_url(url),
            reason: format!("a file:// URL names no host other than localhost, not `{host}`"),
        });
    }
    Ok(Parsed::Local(PathBuf::from(&rest[slash..])))
}

/// `[user[:password]@]host[:port]` of a `scheme://` URL.
fn parse_authority(authority: &str, scheme: Scheme) -> Result<Parsed, String> {
    if let Some(c) = authority
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@[]%".contains(*c)))
    {
        return Err(format!(
            "`{c}` may not stand before the path (a `\\`, `?` or `#` there is read differently by different parsers)"
        ));
    }
    let host_port = match authority.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains('@') => {
            return Err("it has more than one `@` before the path".to_owned());
        }
        Some((_, host_port)) => host_port,
        None => authority,
    };
    let (host, port) = split_host_port(host_port)?;
    let port = match port {
        None | Some("") => scheme.default_port(),
        Some(p) => parse_port(p)?,
    };
    Ok(Parsed::Remote {
        scheme,
        host: check_url_host(host)?,
        port,
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(inner) = s.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or("a `[` around an IPv6 address is not closed")?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("`[{host}]` is not an IPv6 address"));
        }
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(format!("`{after}` may not follow `[{host}]`")),
            },
        };
    }
    Ok(match s.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    })
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(port) if port > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(format!("`{p}` is not a port number")),
    }
}

/// scp-like `[user@]host:path`, `[user@][v6]:path`, `[[user@]host[:port]]:path`.
fn parse_scp(url: &str) -> Result<Parsed, String> {
    if let Some(inner) = url.strip_prefix('[') {
        let (inside, after) = inner
            .split_once(']')
            .ok_or("a `[` around the host is not closed")?;
        if !after.starts_with(':') {
            return Err("`]` must be followed by `:` and the path".to_owned());
        }
        if inside.parse::<Ipv6Addr>().is_ok() {
            return Ok(Parsed::Remote {
                scheme: Scheme::Ssh,
                host: inside.to_owned(),
                port: Scheme::Ssh.default_port(),
            });
        }
        // git's `[user@host:port]:path`.
        let host_port = inside.rsplit_once('@').map_or(inside, |(_, hp)| hp);
        let (host, port) = split_host_port(host_port)?;
        return Ok(Parsed::Remote {
            scheme: Scheme::Ssh,
            host: check_url_host(host)?,
            port: match port {
                None | Some("") => Scheme::Ssh.default_port(),
                Some(p) => parse_port(p)?,
            },
        });
    }
    let colon = url.find(':').unwrap_or(url.len());
    let rest = match url.find('@') {
        Some(at) if at < colon => &url[at + 1..],
        _ => url,
    };
    let host = if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or("a `[` around an IPv6 address is not closed")?;
        if host.parse::<Ipv6Addr>().is_err() || !after.starts_with(':') {
            return Err(format!("`[{host}]` is not an IPv6 address followed by `:`"));
        }
        host
    } else {
        rest.split_once(':').map_or(rest, |(host, _)| host)
    };
    Ok(Parsed::Remote {
        scheme: Scheme::Ssh,
        host: check_url_host(host)?,
        port: Scheme::Ssh.default_port(),
    })
}

/// An IP address literal or a plain ASCII host name; returns it as written.
fn check_url_host(host: &str) -> Result<String, String> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(host.to_owned());
    }
    check_host_name(host)?;
    Ok(host.to_owned())
}

/// A DNS name: ASCII labels of letters, digits, `-` and `_`, not starting with `-`, and a
/// last label that is not a number (`127.1`, `0x7f.1` are IPv4 short forms that resolvers
/// and URL parsers read differently).
fn check_host_name(host: &str) -> Result<(), String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err("the host is empty".to_owned());
    }
    if name.len() > 253 {
        return Err("the host name is longer than 253 characters".to_owned());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "`{host}` is not a host name (a label is empty or longer than 63 characters)"
            ));
        }
        if label.starts_with('-') {
            return Err(format!(
                "`{host}` is not a host name (a label starts with `-`)"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "`{host}` is not a host name (only ASCII letters, digits, `-` and `_`; write international names in punycode)"
            ));
        }
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || (last.len() > 2
            && last[..2].eq_ignore_ascii_case("0x")
            && last[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        return Err(format!(
            "`{host}` is neither a host name nor a dotted-quad IPv4 address"
        ));
    }
    Ok(())
}

/// Where the credentials of a `scheme://` URL stand: the byte range of the text between
/// `://` and the last `@`, and whether only a password in it is secret (ssh and git
/// usernames are not; an http username is often a token).
fn userinfo_span(url: &str) -> Option<(usize, usize, bool)> {
    let start = url.find("://")? + 3;
    let at = start + url[start..].rfind('@')?;
    let scheme = url[..start - 3].to_ascii_lowercase();
    let username_public = matches!(scheme.as_str(), "ssh" | "git+ssh" | "ssh+git" | "git");
    Some((start, at, username_public))
}

/// The URL with its credentials replaced by `***`: an http(s) userinfo entirely, the
/// password of any other. Safe to log and to show.
pub fn redact_url(url: &str) -> String {
    match userinfo_span(url) {
        Some((start, at, username_public)) => {
            let userinfo = &url[start..at];
            let shown = match userinfo.split_once(':') {
                Some((user, _)) if username_public && !user.contains('/') => {
                    format!("{user}:***")
                }
                None if username_public && !userinfo.contains('/') => userinfo.to_owned(),
                _ => "***".to_owned(),
            };
            format!("{}{shown}{}", &url[..start], &url[at..])
        }
        None => url.to_owned(),
    }
}

/// `text` (git's stderr, say) with every credential of `url` replaced by `***`: the
/// userinfo as written, and the secret on its own (raw and percent-decoded) where it is long
/// enough not to be an ordinary word.
pub fn redact_in(url: &str, text: &str) -> String {
    let Some((start, at, username_public)) = userinfo_span(url) else {
        return text.to_owned();
    };
    let userinfo = &url[start..at];
    let redacted = redact_url(url);
    let mut out = text.replace(url, &redacted);
    let shown = &redacted[start..redacted.len() - (url.len() - at)];
    out = out.replace(&format!("{userinfo}@"), &format!("{shown}@"));
    let secret = match userinfo.split_once(':') {
        Some((_, password)) => password,
        None if !username_public => userinfo,
        None => return out,
    };
    for s in [secret.to_owned(), percent_decode(secret)] {
        if s.len() >= 4 {
            out = out.replace(&s, "***");
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
