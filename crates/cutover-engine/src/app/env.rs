//! Every environment variable cutover reads, in one place. The front ends
//! (the CLI, the server) read the process environment once into an
//! [`super::Environment`]; everything below them gets it as an argument.

/// The project directory (same as `--project`).
pub const CUTOVER_PROJECT: &str = "CUTOVER_PROJECT";
/// The PostgreSQL store's URL, over `[state] url` (so that its password
/// stays out of git).
pub const CUTOVER_STATE_URL: &str = "CUTOVER_STATE_URL";
/// The operator's name for locks, records and the audit log (else `USER`).
pub const CUTOVER_USER: &str = "CUTOVER_USER";
/// Who the operator is when CUTOVER_USER is unset.
pub const USER: &str = "USER";
/// `~/` in configured paths.
pub const HOME: &str = "HOME";
/// Where private scratch dirs go (staging, ssh control sockets); else the
/// system temp dir (`TMPDIR`, then /tmp).
pub const XDG_RUNTIME_DIR: &str = "XDG_RUNTIME_DIR";
/// Trusted public key files for release indexes, `:`-separated (besides
/// `[trust] public_keys`).
pub const CUTOVER_TRUST_PUBLIC_KEYS_PATH: &str = "CUTOVER_TRUST_PUBLIC_KEYS_PATH";
/// Trusted public keys as a JSON array of hex strings.
pub const CUTOVER_TRUST_PUBLIC_KEYS_JSON: &str = "CUTOVER_TRUST_PUBLIC_KEYS_JSON";
/// The operator's age identity, which unwraps the store's data key once
/// the project's secrets have operators (else `.cutover/identity.key`).
pub const CUTOVER_IDENTITY_FILE: &str = "CUTOVER_IDENTITY_FILE";
/// The private key `cutover publish` signs with when no `--key` is given.
pub const CUTOVER_SIGNING_KEY_FILE: &str = "CUTOVER_SIGNING_KEY_FILE";
/// `1`: a development project signs release indexes with a key kept in
/// `.cutover/dev-key/` and trusts it. Refused with CUTOVER_ENV=production.
pub const CUTOVER_ALLOW_INSECURE_DEV_KEYS: &str = "CUTOVER_ALLOW_INSECURE_DEV_KEYS";
/// `production`: doctor's checklist applies, insecure dev keys are
/// refused, and promote and rollback refuse while trust is not set up.
pub const CUTOVER_ENV: &str = "CUTOVER_ENV";
/// `1`: `cutover serve` runs without an admin token. Refused with
/// CUTOVER_ENV=production; `cutover doctor` fails it.
pub const CUTOVER_ALLOW_UNAUTHENTICATED_ADMIN: &str = "CUTOVER_ALLOW_UNAUTHENTICATED_ADMIN";
/// The admin token of `cutover serve` (named `admin`).
pub const CUTOVER_ADMIN_TOKEN: &str = "CUTOVER_ADMIN_TOKEN";
/// A file holding the admin token.
pub const CUTOVER_ADMIN_TOKEN_FILE: &str = "CUTOVER_ADMIN_TOKEN_FILE";
/// A file of named tokens, stored hashed (`name:sha256` lines).
pub const CUTOVER_ADMIN_TOKENS_FILE: &str = "CUTOVER_ADMIN_TOKENS_FILE";
/// The read token `cutover publish`, `deploy` and the channel commands send
/// to an `http(s)://` store whose `cutover serve` sets `[serve] store_read_token`.
pub const CUTOVER_STORE_READ_TOKEN: &str = "CUTOVER_STORE_READ_TOKEN";
