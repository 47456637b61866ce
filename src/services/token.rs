//! Token actor: fetches access tokens (OAuth2, Google service account, ArcGIS generateToken), shares one per credentials across connectors, refreshes before expiry and once after a refusal.
//!
//! One actor for the process. Tokens are keyed by [`Auth::cache_key`] (provider, token URL,
//! client id / user: never a secret). A fetch runs in a task that posts its result back, so
//! the mailbox never waits on the network; callers waiting for the same key share one fetch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::slot::ActorSlot;
use crate::auth::{refresh_after, Auth, AuthError, Granted, KeySource, Provider, SecretString};
use crate::http_client::HttpClient;
use crate::outcome::Outcome;
use crate::template::Secrets;

/// Timeout of one token request.
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A token handed out, with the generation it belongs to (for [`TokenMsg::Rejected`]).
#[derive(Debug, Clone)]
pub struct Token {
    pub value: SecretString,
    pub generation: u64,
}

/// Messages to the token actor.
pub enum TokenMsg {
    /// A valid token for these credentials (fetched when there is none, or it is due).
    Get(Arc<Auth>, RpcReplyPort<Result<Token, AuthError>>),
    /// A target refused the token of this generation: drop it and fetch a new one (once per
    /// generation, however many requests were refused).
    Rejected { key: String, generation: u64 },
    /// A fetch finished (from the fetch task).
    Fetched {
        key: String,
        result: Result<Granted, AuthError>,
    },
}

struct Held {
    value: SecretString,
    refresh_at: Instant,
    expires_at: Instant,
}

struct Entry {
    auth: Arc<Auth>,
    token: Option<Held>,
    generation: u64,
    fetching: bool,
    waiters: Vec<RpcReplyPort<Result<Token, AuthError>>>,
}

pub struct TokenState {
    http: HttpClient,
    entries: HashMap<String, Entry>,
}

pub struct TokenActor;

impl Actor for TokenActor {
    type Msg = TokenMsg;
    type State = TokenState;
    type Arguments = HttpClient;

    async fn pre_start(
        &self,
        _me: ActorRef<Self::Msg>,
        http: HttpClient,
    ) -> Result<TokenState, ActorProcessingErr> {
        Ok(TokenState {
            http,
            entries: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut TokenState,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match msg {
            TokenMsg::Get(auth, reply) => {
                let key = auth.cache_key();
                let entry = st.entries.entry(key.clone()).or_insert_with(|| Entry {
                    auth,
                    token: None,
                    generation: 0,
                    fetching: false,
                    waiters: Vec::new(),
                });
                match &entry.token {
                    Some(t) if now < t.expires_at => {
                        let _ = reply.send(Ok(Token {
                            value: t.value.clone(),
                            generation: entry.generation,
                        }));
                        if now >= t.refresh_at && !entry.fetching {
                            // Due: refresh in the background while the current one still works.
                            entry.fetching = true;
                            fetch(&me, &st.http, key, entry.auth.clone());
                        }
                    }
                    _ => {
                        entry.token = None;
                        entry.waiters.push(reply);
                        if !entry.fetching {
                            entry.fetching = true;
                            fetch(&me, &st.http, key, entry.auth.clone());
                        }
                    }
                }
            }
            TokenMsg::Rejected { key, generation } => {
                if let Some(entry) = st.entries.get_mut(&key) {
                    if entry.generation == generation && entry.token.is_some() {
                        tracing::info!(
                            "{} token refused by a target: fetching a new one",
                            entry.auth.kind()
                        );
                        entry.token = None;
                        if !entry.fetching {
                            entry.fetching = true;
                            fetch(&me, &st.http, key, entry.auth.clone());
                        }
                    }
                }
            }
            TokenMsg::Fetched { key, result } => {
                let Some(entry) = st.entries.get_mut(&key) else {
                    return Ok(());
                };
                entry.fetching = false;
                match result {
                    Ok(g) => {
                        entry.generation += 1;
                        tracing::debug!(
                            "{} token fetched; valid {} s",
                            entry.auth.kind(),
                            g.lifetime.as_secs()
                        );
                        for w in entry.waiters.drain(..) {
                            let _ = w.send(Ok(Token {
                                value: g.token.clone(),
                                generation: entry.generation,
                            }));
                        }
                        entry.token = Some(Held {
                            value: g.token,
                            refresh_at: now + refresh_after(g.lifetime),
                            expires_at: now + g.lifetime,
                        });
                    }
                    Err(e) => {
                        tracing::warn!("{} token not fetched: {e}", entry.auth.kind());
                        for w in entry.waiters.drain(..) {
                            let _ = w.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Fetches in a task; the result comes back as [`TokenMsg::Fetched`].
fn fetch(me: &ActorRef<TokenMsg>, http: &HttpClient, key: String, auth: Arc<Auth>) {
    let (me, http) = (me.clone(), http.clone());
    tokio::spawn(async move {
        let result = fetch_token(&http, &auth).await;
        let _ = me.send_message(TokenMsg::Fetched { key, result });
    });
}

/// One token request, end to end.
pub async fn fetch_token(http: &HttpClient, auth: &Auth) -> Result<Granted, AuthError> {
    let key_json = match &auth.provider {
        Provider::Google { key, .. } => Some(read_key(key)?),
        _ => None,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let req = auth.token_request(Secrets::Env, key_json.as_deref(), now.as_secs())?;
    let url = req.url.clone();
    // A token endpoint's error may quote what it was sent (credentials, the assertion): what
    // it says is scrubbed of every secret of the request before anyone sees it.
    let scrubber = token_request_secrets(auth, &req, key_json.as_deref());
    let ex = http.exchange(req, TOKEN_TIMEOUT).await;
    let answer = match ex.answer.outcome {
        Outcome::Status { code, .. } => auth.parse_answer(code, &ex.body, now.as_millis() as u64),
        _ => Err(AuthError::Unavailable(format!(
            "{url}: {}",
            ex.answer.reason
        ))),
    };
    answer.map_err(|e| match e {
        AuthError::Config(m) => AuthError::Config(scrubber.scrub(&m)),
        AuthError::Refused(m) => AuthError::Refused(scrubber.scrub(&m)),
        AuthError::Unavailable(m) => AuthError::Unavailable(scrubber.scrub(&m)),
    })
}

/// The secret values of a token request: the `${VAR}`s its auth reads, the values of the form
/// fields and headers that carry credentials, and the Google key's private parts.
fn token_request_secrets(
    auth: &Auth,
    req: &crate::wire::Request,
    key_json: Option<&str>,
) -> crate::scrub::Scrubber {
    let mut values: Vec<String> = auth
        .secrets()
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .collect();
    for (name, value) in &req.headers {
        if name == http::header::AUTHORIZATION {
            if let Ok(v) = value.to_str() {
                values.extend(v.split_once(' ').map(|(_, cred)| cred.to_string()));
                values.push(v.to_string());
            }
        }
    }
    if let Some(body) = &req.body {
        for (k, v) in form_urlencoded::parse(body) {
            if matches!(
                k.as_ref(),
                "client_secret" | "assertion" | "password" | "refresh_token" | "client_assertion"
            ) {
                values.push(v.into_owned());
            }
        }
    }
    if let Some(key) = key_json.and_then(|k| serde_json::from_str::<serde_json::Value>(k).ok()) {
        for field in ["private_key", "private_key_id"] {
            if let Some(v) = key.get(field).and_then(|v| v.as_str()) {
                values.push(v.to_string());
            }
        }
    }
    crate::scrub::Scrubber::new(values)
}

/// The Google key JSON: from its file, or from `${VAR}` (the JSON itself, or a path to it).
fn read_key(key: &KeySource) -> Result<String, AuthError> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map_err(|e| AuthError::Config(format!("service account key {}: {e}", p.display())))
    };
    match key {
        KeySource::File(p) => read(p),
        KeySource::Env(var) => {
            let v = std::env::var(var).map_err(|_| {
                AuthError::Config(format!("environment variable `{var}` is not set"))
            })?;
            if v.trim_start().starts_with('{') {
                Ok(v)
            } else {
                read(std::path::Path::new(v.trim()))
            }
        }
    }
}

/// How long a caller waits for a restarted token actor before giving up on this attempt.
const RESTART_WAIT: Duration = Duration::from_secs(5);

/// A handle on the token actor for deliveries; follows its restarts. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tokens {
    pub(super) actor: ActorSlot<TokenMsg>,
}

impl Tokens {
    /// The token actor now (`None` while it restarts).
    pub fn actor(&self) -> Option<ActorRef<TokenMsg>> {
        self.actor.get()
    }

    /// A token for `auth`: static ones read now, fetched ones from the actor. While the actor
    /// is being restarted (its cache is lost with it), the caller waits for the next one.
    pub async fn get(&self, auth: &Arc<Auth>) -> Result<Token, AuthError> {
        if let Some(t) = auth.static_token(Secrets::Env) {
            return t.map(|value| Token {
                value,
                generation: 0,
            });
        }
        let deadline = Instant::now() + RESTART_WAIT;
        loop {
            if let Some(actor) = self.actor.get() {
                match actor
                    .call(|r| TokenMsg::Get(auth.clone(), r), Some(TOKEN_TIMEOUT * 2))
                    .await
                {
                    Ok(ractor::rpc::CallResult::Success(r)) => return r,
                    Ok(ractor::rpc::CallResult::Timeout) => break,
                    _ => {} // it died while we waited: ask the next one
                }
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(AuthError::Unavailable(
            "the token actor did not answer".into(),
        ))
    }

    /// Reports a refused token; only fetched tokens are refreshed.
    pub fn rejected(&self, auth: &Auth, generation: u64) {
        if auth.is_fetched() {
            self.actor.send(TokenMsg::Rejected {
                key: auth.cache_key(),
                generation,
            });
        }
    }
}
