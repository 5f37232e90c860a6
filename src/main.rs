//! The `riptide` command: run the gateway, check a configuration, mint local access tokens,
//! place a test call over HTTP/3, answer test calls as a registered handler.
//!
//! Exit codes: 0 success, 1 runtime error, 2 configuration or usage error.

use clap::{Args, Parser, Subcommand};
use riptide::auth::LocalIssuer;
use riptide::config::{self, Config, LogFormat};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;
/// Bad arguments (as clap exits on a usage error).
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "riptide",
    version,
    about = "SIP <-> HTTP/3 (RIPT) interworking gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (with the built-in configuration when no file is given).
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Load and validate a configuration file, then exit. What holds but may not work as meant
    /// on this host (the media port range) is printed to stderr as warnings.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Access tokens of the gateway's local issuer.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// STIR/SHAKEN: a test PKI for signing, and checking an Identity header offline.
    Stir {
        #[command(subcommand)]
        command: StirCommand,
    },
    /// Place one call over HTTP/3 as a RIPT client: play a WAV file, record what comes back,
    /// print setup time, packets, loss and jitter. Exit 0 when it was answered and ended normally.
    Call(CallArgs),
    /// Register a handler on the TG of a `[[ript_peer]]` and answer the calls offered to it
    /// (a SIP call routed to that TG's handlers): record what the caller sends, play a WAV
    /// file (or silence), print the same statistics as `call`. Prints `registered <URI>` once
    /// the handler's events stream is open. Exit 0 when every call was answered and ended
    /// normally (or declined, with --decline).
    ///
    /// Setup time here is from the `incoming` event to our `answered` (the take, and --ring).
    Answer(AnswerArgs),
}

#[derive(Args)]
struct AnswerArgs {
    /// Configuration whose `[[ript_peer]]` gives the gateway's URL, trust, token (scopes
    /// handlers:write and calls:write) and `tg`, the TG to register on.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Which `[[ript_peer]]` of the configuration (default: the first).
    #[arg(long, value_name = "NAME")]
    peer: Option<String>,
    /// The handler-id to register (default: riptide-answer-<random>).
    #[arg(long, value_name = "ID")]
    handler_id: Option<String>,
    /// Write the audio received to this WAV file (8 kHz mono 16-bit PCM); with --calls,
    /// call N > 1 goes to OUT-N.wav.
    #[arg(long, value_name = "OUT.wav", required_unless_present = "decline")]
    record: Option<PathBuf>,
    /// Audio to send once answered, looped until the call ends: WAV, 8 kHz mono 16-bit PCM
    /// (sent as PCMU, 20 ms packets). Default: silence.
    #[arg(long, value_name = "FILE.wav")]
    play: Option<PathBuf>,
    /// Hang up this many seconds after answering (default: wait for the caller to hang up).
    #[arg(long, value_name = "S")]
    duration: Option<f64>,
    /// Ring (send `alerting`) this many seconds before answering (default: answer at once).
    #[arg(long, value_name = "S")]
    ring: Option<f64>,
    /// Handle this many calls, one after the other, then exit (the handler is left registered
    /// on the gateway; it goes unreachable when this process ends).
    #[arg(long, value_name = "N", default_value_t = 1)]
    calls: u32,
    /// Decline each call (603 Decline) instead of answering it.
    #[arg(long, conflicts_with_all = ["play", "duration", "ring"])]
    decline: bool,
}

#[derive(Args)]
struct CallArgs {
    /// Who to call: `sip:user@host`, `tel:+1...`, or a bare number or user; the user part
    /// (or number) is the destination sent to the peer.
    #[arg(value_name = "TARGET")]
    target: String,
    /// Gateway configuration whose `[[ript_peer]]` gives the peer's URL, trust and token.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Which `[[ript_peer]]` of the configuration (default: the first).
    #[arg(long, value_name = "NAME")]
    peer: Option<String>,
    /// Audio to send: WAV, 8 kHz mono 16-bit PCM (sent as PCMU, 20 ms packets).
    #[arg(long, value_name = "FILE.wav")]
    play: PathBuf,
    /// Write the audio received to this WAV file (8 kHz mono 16-bit PCM).
    #[arg(long, value_name = "OUT.wav")]
    record: Option<PathBuf>,
    /// Seconds of audio to send after the answer (the play file loops); default its length.
    #[arg(long, value_name = "S")]
    duration: Option<f64>,
    /// DTMF keys to send as RFC 4733 events after the answer (e.g. `123#`).
    #[arg(long, value_name = "DIGITS")]
    dtmf: Option<String>,
}

#[derive(Subcommand)]
enum StirCommand {
    /// Write a test STI PKI into DIR: root and intermediate CA, a SHAKEN leaf with TNAuthList
    /// (SPC), its key, the chain to publish at x5u, and an STI-PA CRL with its signer.
    Pki {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Service Provider Code put in the leaf's TNAuthList.
        #[arg(long, default_value = "1234")]
        spc: String,
    },
    /// Verify an Identity header against a certificate chain and trust anchors (no network):
    /// prints the verstat and, on failure, the SIP response riptide would send.
    Verify {
        /// The Identity header value (or the whole `Identity: ...` line).
        #[arg(long)]
        identity: String,
        /// PEM chain the header's x5u serves (leaf first).
        #[arg(long, value_name = "FILE")]
        chain: PathBuf,
        /// PEM trust anchors (STI-CA roots).
        #[arg(long, value_name = "FILE")]
        trust: PathBuf,
        /// Verify as of this time (seconds since 1970); default now.
        #[arg(long)]
        at: Option<u64>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new access token signed by the local issuer of a data directory.
    Mint(MintArgs),
    /// Revoke one token of the local issuer (by its `jti`, or the token itself); a running
    /// gateway refuses it within a second, and after restarts.
    Revoke(RevokeArgs),
    /// Replace the issuer's signing key. Tokens signed with the old key stay valid for
    /// --overlap-secs (their remaining lifetime); new tokens use the new key id. A running
    /// gateway picks the change up by itself and its JWKS lists both keys meanwhile.
    RotateKey(RotateArgs),
}

#[derive(Args)]
struct RotateArgs {
    #[command(flatten)]
    dir: DataDirArgs,
    /// How long the old key keeps verifying (default 30 days, the default token lifetime).
    #[arg(long, default_value_t = 30 * 24 * 3600)]
    overlap_secs: u64,
}

#[derive(Args)]
struct RevokeArgs {
    #[command(flatten)]
    dir: DataDirArgs,
    /// The token's `jti` claim.
    #[arg(long, conflicts_with = "token", required_unless_present = "token")]
    jti: Option<String>,
    /// The token itself (its `jti` and `exp` are read from it).
    #[arg(long)]
    token: Option<String>,
}

/// Where the local issuer's files are (key, retired keys, revocation list).
#[derive(Args)]
struct DataDirArgs {
    /// Take the data directory from this configuration file.
    #[arg(long, short, value_name = "FILE", conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// The data directory itself.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct MintArgs {
    #[command(flatten)]
    dir: DataDirArgs,
    /// `sub` claim of the token.
    #[arg(long, default_value = "local")]
    subject: String,
    /// Scope to grant; repeat for several. Default: calls:write tgs:read handlers:write.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// Lifetime in seconds (default 30 days).
    #[arg(long, default_value_t = 30 * 24 * 3600)]
    ttl_secs: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match config::load_file(&file) {
            Ok(cfg) => {
                for w in config::host_media_port_warnings(&cfg) {
                    eprintln!("warning: {w}");
                }
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Serve { config } => serve(config.as_deref()),
        Command::Token {
            command: TokenCommand::Revoke(args),
        } => revoke(args),
        Command::Stir { command } => stir(command),
        Command::Call(args) => call(args),
        Command::Answer(args) => answer(args),
        Command::Token {
            command: TokenCommand::RotateKey(args),
        } => rotate_key(args),
        Command::Token {
            command: TokenCommand::Mint(args),
        } => mint(args),
    }
}

fn load(config: Option<&Path>) -> Result<Config, ExitCode> {
    match config {
        None => Ok(config::embedded_default()),
        Some(path) => config::load_file(path).map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }),
    }
}

fn serve(config: Option<&Path>) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = init_tracing(&cfg) {
        eprintln!("general.log_level: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match runtime(cfg.general.worker_threads) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(riptide::gateway::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// The async runtime for `serve` and `call`, with the process's one crypto provider installed;
/// `Err` is the exit code after the reason was printed. `workers`: threads, else tokio's default
/// (one per core, or `TOKIO_WORKER_THREADS`).
fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, ExitCode> {
    // Installing fails only if a provider is already installed, which is then the same one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::from(EXIT_RUNTIME)
    })
}

/// Logs of the client tools go to stderr, and only on request: stdout carries the summary,
/// stderr the progress line.
fn client_tool_logging() {
    if let Ok(v) = std::env::var("RUST_LOG") {
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_new(&v) {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .try_init();
        }
    }
}

/// The exit code of a client tool that could not do its job: 2 for bad input, else 1.
fn client_tool_failed(e: &riptide::client_tool::CallError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(match e {
        riptide::client_tool::CallError::Config(_) => EXIT_CONFIG,
        _ => EXIT_RUNTIME,
    })
}

fn call(args: CallArgs) -> ExitCode {
    use riptide::client_tool::{self, CallOptions};
    use std::io::IsTerminal;
    client_tool_logging();
    let runtime = match runtime(None) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let opts = CallOptions {
        config: args.config,
        peer: args.peer,
        target: args.target,
        play: args.play,
        record: args.record,
        duration: args.duration,
        dtmf: args.dtmf,
        progress: std::io::stderr().is_terminal(),
    };
    match runtime.block_on(client_tool::call(opts)) {
        Ok(summary) => {
            println!("{summary}");
            if summary.success {
                ExitCode::SUCCESS
            } else {
                eprintln!("error: call {}", summary.end);
                ExitCode::from(EXIT_RUNTIME)
            }
        }
        Err(e) => client_tool_failed(&e),
    }
}

fn answer(args: AnswerArgs) -> ExitCode {
    use riptide::client_tool::answer::{self, AnswerOptions};
    use std::io::IsTerminal;
    client_tool_logging();
    let runtime = match runtime(None) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let opts = AnswerOptions {
        config: args.config,
        peer: args.peer,
        handler_id: args.handler_id,
        record: args.record,
        play: args.play,
        duration: args.duration,
        ring: args.ring,
        calls: args.calls,
        decline: args.decline,
        progress: std::io::stderr().is_terminal(),
    };
    // The summaries are printed as each call ends.
    match runtime.block_on(answer::answer(opts)) {
        Ok(summaries) => {
            let failed = summaries.iter().filter(|s| !s.success).count();
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "error: {failed} of {} call(s) did not end normally",
                    summaries.len()
                );
                ExitCode::from(EXIT_RUNTIME)
            }
        }
        Err(e) => client_tool_failed(&e),
    }
}

/// `RUST_LOG`, when set, overrides `general.log_level` so a running setup can be debugged
/// without editing its file.
fn init_tracing(cfg: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(&v).map_err(|e| anyhow::anyhow!("RUST_LOG {v:?}: {e}"))?
        }
        _ => EnvFilter::try_new(&cfg.general.log_level)
            .map_err(|e| anyhow::anyhow!("{:?}: {e}", cfg.general.log_level))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let res = match cfg.general.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    res.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

fn stir(cmd: StirCommand) -> ExitCode {
    match cmd {
        StirCommand::Pki { dir, spc } => match riptide::stir::create_test_pki(&dir, &spc) {
            Ok(f) => {
                println!("root (trust anchor): {}", f.root_cert.display());
                println!("chain (publish at x5u): {}", f.chain.display());
                println!("leaf key (stir.sign_key): {}", f.leaf_key.display());
                println!(
                    "CRL: {} signed by {}",
                    f.crl.display(),
                    f.crl_signer_cert.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        },
        StirCommand::Verify {
            identity,
            chain,
            trust,
            at,
        } => {
            let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
            let (chain, trust) = match (read(&chain), read(&trust)) {
                (Ok(c), Ok(t)) => (c, t),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            let now = at.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            });
            match riptide::stir::verify::verify_identity_offline(&identity, &chain, &trust, now) {
                Ok(out) => {
                    println!("verstat={}", out.verstat.as_str());
                    match out.code {
                        None => {
                            if let Some(a) = out.attest() {
                                println!("attest={a:?}");
                            }
                            if let Some(spc) = out.verified().and_then(|v| v.spc.as_deref()) {
                                println!("spc={spc}");
                            }
                            ExitCode::SUCCESS
                        }
                        Some(code) => {
                            println!("{} {}", code.status(), code.reason_phrase());
                            for r in out.reason_headers() {
                                println!("Reason: {r}");
                            }
                            ExitCode::from(EXIT_RUNTIME)
                        }
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
    }
}

/// The data directory `--data-dir` names, else the one of `--config` (or the defaults), and
/// the time now in seconds since 1970.
fn issuer_context(dir: &DataDirArgs) -> Result<(PathBuf, u64), ExitCode> {
    let data_dir = match &dir.data_dir {
        Some(d) => d.clone(),
        None => load(dir.config.as_deref()).map(|cfg| cfg.resolve_path(&cfg.general.data_dir))?,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| {
            eprintln!("error: the system clock is before 1970");
            ExitCode::from(EXIT_RUNTIME)
        })?;
    Ok((data_dir, now))
}

/// Prints `out` and succeeds, or prints the error and fails (exit 1).
fn print_or_fail(out: anyhow::Result<String>) -> ExitCode {
    match out {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn rotate_key(args: RotateArgs) -> ExitCode {
    let (data_dir, now) = match issuer_context(&args.dir) {
        Ok(x) => x,
        Err(code) => return code,
    };
    print_or_fail(
        LocalIssuer::rotate(&data_dir, args.overlap_secs, now)
            .map(|kid| format!("new key id {kid}")),
    )
}

fn revoke(args: RevokeArgs) -> ExitCode {
    let (data_dir, now) = match issuer_context(&args.dir) {
        Ok(x) => x,
        Err(code) => return code,
    };
    // Without the token its expiry is unknown: keep the entry for the longest mint lifetime.
    let (jti, exp) = match (&args.jti, &args.token) {
        (Some(j), _) => (j.clone(), now + 366 * 24 * 3600),
        (None, Some(t)) => match riptide::auth::token_id(t) {
            Some(x) => x,
            None => {
                eprintln!("error: --token is not a JWT with jti and exp claims");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        (None, None) => {
            eprintln!("error: give --jti or --token");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    print_or_fail(
        riptide::auth::Revocations::revoke(&data_dir, &jti, exp, now)
            .map(|()| format!("revoked {jti}")),
    )
}

fn mint(args: MintArgs) -> ExitCode {
    let (data_dir, now) = match issuer_context(&args.dir) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let scopes: Vec<String> = if args.scopes.is_empty() {
        ["calls:write", "tgs:read", "handlers:write"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        // `--scope "a b"` is accepted as two scopes, as in the OAuth `scope` parameter.
        args.scopes
            .iter()
            .flat_map(|s| s.split_whitespace())
            .map(str::to_string)
            .collect()
    };
    print_or_fail(
        LocalIssuer::load_or_create(&data_dir)
            .and_then(|issuer| issuer.mint(&args.subject, &scopes, args.ttl_secs, now)),
    )
}
