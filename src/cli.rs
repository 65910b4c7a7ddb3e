//! The GrootFS-compatible command line. Garden runs `nestfs [global flags] COMMAND ...`, reads
//! stdout as JSON and shows stdout to its users on failure, so every failure is one clear line
//! on stdout and a non-zero exit; logs are lager JSON on stderr (or `--log-file`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use serde_json::json;

use crate::commands::{self, Ctx, Output};
use crate::config::Config;
use crate::image::PullOptions;
use crate::lifecycle;
use crate::logging::{Level, Logger};
use crate::metrics::Metrics;
use crate::store::{self, IdMapping, Store};
use crate::usage;

#[derive(Parser)]
#[command(
    name = "nestfs",
    version,
    about = "Container root filesystems served by a FUSE overlay (GrootFS-compatible)"
)]
struct Cli {
    /// Store directory [default: /var/lib/nestfs for root, $XDG_DATA_HOME/nestfs otherwise]
    #[arg(long, global = true)]
    store: Option<PathBuf>,
    /// YAML config file with GrootFS's keys; flags win over it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// debug, info, error or fatal [default: fatal]
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Write logs here instead of stderr.
    #[arg(long, global = true)]
    log_file: Option<PathBuf>,
    /// GrootFS-only flags, accepted so an existing Garden configuration works unchanged.
    #[arg(long, global = true, hide = true)]
    tardis_bin: Option<String>,
    #[arg(long, global = true, hide = true)]
    newuidmap_bin: Option<String>,
    #[arg(long, global = true, hide = true)]
    newgidmap_bin: Option<String>,
    #[arg(long, global = true, hide = true)]
    metron_endpoint: Option<String>,
    #[arg(long, global = true, hide = true)]
    driver: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// How `create` and `convert` reach a registry.
#[derive(clap::Args)]
struct RegistryArgs {
    /// User name for the registry (with --password)
    #[arg(long)]
    username: Option<String>,
    /// Password for the registry (with --username)
    #[arg(long)]
    password: Option<String>,
    /// A registry (HOST[:PORT]) whose TLS certificate is not verified, or else reached over plain HTTP (repeatable)
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registries: Vec<String>,
}

impl RegistryArgs {
    /// With the config file's insecure registries and foreign-layer certificates.
    fn pull_options(self, config: &Config, skip_layer_validation: bool) -> PullOptions {
        let mut insecure_registries = self.insecure_registries;
        insecure_registries.extend(config.create.insecure_registries.iter().cloned());
        PullOptions {
            username: self.username,
            password: self.password,
            insecure_registries,
            skip_layer_validation,
            remote_layer_certs: config.create.remote_layer_client_certificates_path.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the store (idempotent).
    InitStore {
        /// Map container uids CONTAINER.. to host uids HOST.. (SIZE ids; repeatable); the
        /// daemon shows layer owners through it. Default for an ordinary user: 0:YOUR_UID:1
        #[arg(long = "uid-mapping", value_name = "CONTAINER:HOST:SIZE")]
        uid_mappings: Vec<IdMapping>,
        /// Map container gids to host gids, as --uid-mapping does for uids (repeatable)
        #[arg(long = "gid-mapping", value_name = "CONTAINER:HOST:SIZE")]
        gid_mappings: Vec<IdMapping>,
        /// The capacity `capacity` reports [default: the size of the store's filesystem]
        #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = usage::byte_count("store size"))]
        store_size_bytes: Option<u64>,
        #[arg(long, hide = true)]
        with_direct_io: bool,
        #[arg(long, hide = true)]
        without_direct_io: bool,
    },
    /// Create a mounted root filesystem for IMAGE and print its runtime spec.
    Create {
        /// Cap the image's layers plus the container's writes at N bytes (writes past it fail
        /// with EDQUOT); 0: no limit
        #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = usage::byte_count("disk limit"))]
        disk_limit_size_bytes: Option<u64>,
        /// Count only the container's writes against the disk limit, not the image's layers
        #[arg(long)]
        exclude_image_from_quota: bool,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Remove unused layer volumes before creating (see `clean`)
        #[arg(long, conflicts_with = "without_clean")]
        with_clean: bool,
        /// Do not clean before creating, whatever the config file says
        #[arg(long)]
        without_clean: bool,
        /// Write the --with-clean cleaning's logs to FILE instead of the log stream
        #[arg(long, value_name = "FILE")]
        clean_log_file: Option<PathBuf>,
        /// With --with-clean: clean only when the store holds more than N bytes of layers
        #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = usage::byte_count("clean threshold"))]
        threshold_bytes: Option<u64>,
        /// Do not check layer digests of OCI layouts and registries against their manifests
        #[arg(long)]
        skip_layer_validation: bool,
        /// Mount the rootfs (the default)
        #[arg(long, overrides_with = "without_mount")]
        with_mount: bool,
        /// Accepted for GrootFS compatibility: a FUSE rootfs is always mounted by its daemon
        #[arg(long)]
        without_mount: bool,
        /// Pull eStargz layers in full before returning, instead of fetching their files as
        /// they are read
        #[arg(long)]
        without_lazy_pull: bool,
        /// docker:///NAME[:TAG] (Docker Hub), docker://HOST[:PORT]/NAME[:TAG|@DIGEST],
        /// oci:///PATH[:TAG|:@N] (an OCI layout; TAG matches org.opencontainers.image.ref.name,
        /// @N its manifest number N, from 0), or the path of a rootfs tarball
        image: String,
        /// The image's id: images/ID in the store
        id: String,
    },
    /// Stop an image's daemon and remove it (an unknown id is not an error).
    Delete {
        /// An image id, or its image or rootfs path
        id: String,
    },
    /// Disk usage of an image, as JSON.
    Stats {
        /// An image id, or its image or rootfs path
        id: String,
    },
    /// Remove layer volumes no image uses.
    Clean {
        /// Clean only when the store holds more than N bytes of layers
        #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = usage::byte_count("clean threshold"))]
        threshold_bytes: Option<u64>,
        /// Keep the layers of this image even if unused (repeatable)
        #[arg(long = "ignore-image", value_name = "IMAGE")]
        ignore_images: Vec<String>,
    },
    /// Images, one per line: path and state (mounted, daemon-dead, not-mounted).
    List {
        /// One JSON array with each image's id, path, state, live usage and limit.
        #[arg(long)]
        json: bool,
    },
    /// Serve images again whose daemon died or that lost their mount (e.g. after a reboot),
    /// keeping what their containers wrote. Without ids: every image that needs it.
    Remount {
        /// Image ids or paths [default: every image that needs it]
        ids: Vec<String>,
    },
    /// Hand each served image to a daemon of the nestfs binary installed now, with no unmount
    /// and no container restart: the keeper holding its FUSE connection starts the new daemon
    /// (root stores). Without ids: every served image.
    Upgrade {
        /// Image ids or paths [default: every served image]
        ids: Vec<String>,
    },
    /// The store's capacity, as JSON.
    Capacity,
    /// Remove every image and the store.
    DeleteStore,
    /// Write an eStargz copy of IMAGE as a new OCI layout at DEST, for lazy pulling: each
    /// file's data compressed on its own, indexed by a table of contents. Any other runtime
    /// still reads it as an ordinary gzip image.
    Convert {
        /// Split files bigger than N bytes into chunks of N bytes
        #[arg(long, value_name = "N", default_value_t = crate::estargz::writer::DEFAULT_CHUNK_SIZE, value_parser = usage::byte_count("chunk size"))]
        chunk_size: u64,
        /// FILE lists paths (one per line, as in the rootfs) to fetch first: they go before
        /// the prefetch landmark
        #[arg(long, value_name = "FILE")]
        prefetch_list: Option<PathBuf>,
        /// Name the image TAG in DEST (then oci:///DEST:TAG)
        #[arg(long)]
        tag: Option<String>,
        #[command(flatten)]
        registry: RegistryArgs,
        /// The image, as `create` takes it
        image: String,
        /// Directory for the new OCI layout (must not exist, or be empty)
        dest: PathBuf,
    },
    /// The per-image FUSE daemon `create` starts.
    #[command(hide = true)]
    ServeImage { id: String },
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => return crate::usage::report(&e, &args, &Cli::command()),
    };
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            println!("{e:#}");
            return 1;
        }
    };
    let log_file = cli.log_file.clone().or(config.log_file.clone());
    // As GrootFS: fatal errors only (that is, nothing) unless asked; a log file alone means info.
    let level = cli
        .log_level
        .clone()
        .or(config.log_level.clone())
        .unwrap_or_else(|| if log_file.is_some() { "info" } else { "fatal" }.into());
    // Like GrootFS: a person at a terminal who asked for no logs sees pull progress instead.
    let show_progress = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && cli.log_level.is_none()
        && config.log_level.is_none()
        && log_file.is_none();
    let logger = match level
        .parse::<Level>()
        .map_err(anyhow::Error::msg)
        .and_then(|l| {
            Logger::new(l, log_file.as_deref()).map_err(|e| {
                // GrootFS's words, Go's error text.
                anyhow::anyhow!(
                    "failed to configure logger: open {}: {}",
                    log_file
                        .as_deref()
                        .unwrap_or(std::path::Path::new(""))
                        .display(),
                    crate::image::os_error_text(&e)
                )
            })
        }) {
        Ok(l) => l,
        Err(e) => {
            println!("{e:#}");
            return 1;
        }
    };
    let root = cli
        .store
        .clone()
        .or(config.store.clone())
        .unwrap_or_else(store::default_root);
    let store = Store::new(root);
    let log = logger.session(command_name(&cli.cmd));
    let endpoint = cli
        .metron_endpoint
        .clone()
        .or(config.metron_endpoint.clone());
    let metrics = Metrics::new(endpoint.as_deref(), &log);
    log.debug("starting", json!({ "store": store.root() }));
    let ctx = Ctx {
        store: &store,
        config: &config,
        log: &log,
        metrics: &metrics,
    };
    match dispatch(cli.cmd, &ctx, show_progress) {
        Ok(out) => {
            if let Some(out) = out {
                println!("{out}");
            }
            log.debug("ending", json!({}));
            0
        }
        Err(e) => {
            let msg = format!("{e:#}");
            log.error("failed", json!({ "error": msg }));
            println!("{msg}");
            1
        }
    }
}

fn command_name(cmd: &Cmd) -> &'static str {
    match cmd {
        Cmd::InitStore { .. } => "init-store",
        Cmd::Create { .. } => "create",
        Cmd::Delete { .. } => "delete",
        Cmd::Stats { .. } => "stats",
        Cmd::Clean { .. } => "clean",
        Cmd::List { .. } => "list",
        Cmd::Remount { .. } => "remount",
        Cmd::Upgrade { .. } => "upgrade",
        Cmd::Capacity => "capacity",
        Cmd::DeleteStore => "delete-store",
        Cmd::Convert { .. } => "convert",
        Cmd::ServeImage { .. } => "serve-image",
    }
}

/// Hands the parsed command to its module, with flags merged over the config file.
fn dispatch(cmd: Cmd, ctx: &Ctx, progress: bool) -> Output {
    let config = ctx.config;
    match cmd {
        Cmd::InitStore {
            uid_mappings,
            gid_mappings,
            store_size_bytes,
            ..
        } => commands::init_store::run(ctx, uid_mappings, gid_mappings, store_size_bytes),
        Cmd::Create {
            disk_limit_size_bytes,
            exclude_image_from_quota,
            registry,
            with_clean,
            without_clean,
            clean_log_file,
            threshold_bytes,
            skip_layer_validation,
            with_mount: _,
            without_mount,
            without_lazy_pull,
            image,
            id,
        } => {
            let opts = registry.pull_options(
                config,
                skip_layer_validation || config.create.skip_layer_validation,
            );
            if without_mount || config.create.without_mount {
                // A FUSE rootfs cannot be handed to the caller to mount: always serve it.
                ctx.log.info(
                    "without-mount-ignored",
                    json!({ "reason": "a FUSE rootfs is mounted by its daemon" }),
                );
            }
            let clean = (with_clean || config.create.with_clean) && !without_clean;
            let req = commands::create::Request {
                image,
                id,
                opts,
                disk_limit: disk_limit_size_bytes.or(config.disk_limit()).unwrap_or(0),
                exclude: exclude_image_from_quota || config.create.exclude_image_from_quota,
                clean: clean.then(|| threshold_bytes.or(config.clean_threshold())),
                clean_log: clean_log_file.or(config.create.clean_log_file.clone()),
                progress,
                lazy: !without_lazy_pull,
            };
            commands::create::run(ctx, req)
        }
        Cmd::Delete { id } => commands::delete::run(ctx, &id),
        Cmd::Stats { id } => commands::stats::run(ctx, &id),
        Cmd::Clean {
            threshold_bytes,
            ignore_images,
        } => commands::clean::run(ctx, threshold_bytes, ignore_images, progress),
        Cmd::List { json } => commands::list::run(ctx, json),
        Cmd::Remount { ids } => commands::remount::run(ctx, &ids),
        Cmd::Upgrade { ids } => commands::upgrade::run(ctx, &ids),
        Cmd::Capacity => commands::capacity::run(ctx),
        Cmd::DeleteStore => commands::delete_store::run(ctx),
        Cmd::Convert {
            chunk_size,
            prefetch_list,
            tag,
            registry,
            image,
            dest,
        } => {
            let prefetch = match prefetch_list {
                Some(p) => std::fs::read_to_string(&p)
                    .with_context(|| format!("read prefetch list {}", p.display()))?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect(),
                None => Vec::new(),
            };
            let req = commands::convert::Request {
                image,
                dest,
                tag,
                opts: registry.pull_options(config, false),
                chunk_size,
                prefetch,
            };
            commands::convert::run(ctx, req)
        }
        Cmd::ServeImage { id } => {
            lifecycle::serve(ctx.store, &id)?;
            Ok(None)
        }
    }
}
