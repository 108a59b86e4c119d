//! `kiln token create|list|revoke`: over HTTP when `--server`/`KILN_SERVER` is given, else
//! offline on the local store (`--data-dir`/`--database`) — how the first tokens of a server
//! are made without one. Both ways print the same thing.

use std::io::Write;

use kiln_proto::{CreatedToken, NewToken, TokenId, TokenInfo, TokenList, check_token_name, exit};
use kiln_store::{Store, StoreError};

use crate::Failure;
use crate::args::{
    Format, TokenArgs, TokenCommand, TokenCreateArgs, TokenListArgs, TokenRevokeArgs, TokenTarget,
};
use crate::client::Client;
use crate::output::{print_json, stdout_line};

pub(crate) async fn token(a: TokenArgs) -> Result<i32, Failure> {
    match a.command {
        TokenCommand::Create(c) => create(c).await,
        TokenCommand::List(c) => list(c).await,
        TokenCommand::Revoke(c) => revoke(c).await,
    }
}

/// Where the tokens are.
enum Tokens {
    Remote(Client),
    Local(Store),
}

impl Tokens {
    async fn open(t: &TokenTarget) -> Result<Self, Failure> {
        match &t.remote.server {
            Some(server) => Ok(Self::Remote(Client::new(
                server,
                t.remote.token.as_deref(),
            )?)),
            None => Ok(Self::Local(t.store.open().await?)),
        }
    }

    async fn create(&self, req: &NewToken) -> Result<CreatedToken, Failure> {
        match self {
            Self::Remote(c) => c.post("/api/v1/tokens", req).await,
            Self::Local(store) => {
                let name = check_token_name(&req.name)
                    .map_err(|why| Failure::invalid(format!("--name {why}")))?;
                match store.create_token(name, req.role, req.project).await {
                    Ok((info, token)) => Ok(CreatedToken::new(&info, token)),
                    Err(StoreError::NotFound {
                        what: "project",
                        id,
                    }) => Err(Failure::invalid(format!(
                        "--project: no project has id `{id}`"
                    ))),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    async fn list(&self) -> Result<TokenList, Failure> {
        match self {
            Self::Remote(c) => c.get("/api/v1/tokens").await,
            Self::Local(store) => Ok(TokenList {
                tokens: store.list_tokens().await?,
            }),
        }
    }

    async fn revoke(&self, id: &str) -> Result<TokenInfo, Failure> {
        match self {
            Self::Remote(c) => c.delete(&format!("/api/v1/tokens/{id}")).await,
            Self::Local(store) => {
                let not_found = || Failure::invalid(format!("no token has id `{id}`"));
                let token_id: TokenId = id.trim().parse().map_err(|_| not_found())?;
                if !store.revoke_token(token_id).await? {
                    return Err(not_found());
                }
                store
                    .list_tokens()
                    .await?
                    .into_iter()
                    .find(|t| t.id == token_id)
                    .ok_or_else(not_found)
            }
        }
    }
}

async fn create(a: TokenCreateArgs) -> Result<i32, Failure> {
    let tokens = Tokens::open(&a.target).await?;
    let created = tokens
        .create(&NewToken {
            name: a.name,
            role: a.role,
            project: a.project,
        })
        .await?;
    match a.format {
        Format::Json => print_json(&created),
        Format::Text => {
            // The secret alone on stdout (for `$(kiln token create …)`), the rest for people.
            stdout_line(&created.token);
            let mut err = std::io::stderr().lock();
            let _ = writeln!(
                err,
                "created {} token `{}` ({}): this is the only time it is shown, keep it safe",
                created.role, created.name, created.id
            );
        }
    }
    Ok(exit::OK)
}

async fn list(a: TokenListArgs) -> Result<i32, Failure> {
    let list = Tokens::open(&a.target).await?.list().await?;
    match a.format {
        Format::Json => print_json(&list),
        Format::Text => {
            if list.tokens.is_empty() {
                stdout_line("no tokens yet");
            }
            for t in &list.tokens {
                stdout_line(&describe(t));
            }
        }
    }
    Ok(exit::OK)
}

async fn revoke(a: TokenRevokeArgs) -> Result<i32, Failure> {
    let info = Tokens::open(&a.target).await?.revoke(&a.id).await?;
    match a.format {
        Format::Json => print_json(&info),
        Format::Text => stdout_line(&format!("revoked {}", describe(&info))),
    }
    Ok(exit::OK)
}

/// One line about a token: id, role, name, scope, when made and last used, revoked or not.
fn describe(t: &TokenInfo) -> String {
    let when = |ts: Option<jiff::Timestamp>| {
        ts.map(|ts| ts.strftime("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_else(|| "never".to_owned())
    };
    let project = t
        .project
        .map(|p| format!("project {p}"))
        .unwrap_or_else(|| "all projects".to_owned());
    format!(
        "{}  {:<10}  {}  ({project}; created {}, last used {}){}",
        t.id,
        t.role.as_str(),
        t.name,
        when(Some(t.created_at)),
        when(t.last_used_at),
        if t.revoked { "  REVOKED" } else { "" }
    )
}
