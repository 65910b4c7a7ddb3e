//! The GrootFS-compatible command line. Garden runs `nestfs [global flags] COMMAND ...`, reads
//! stdout as JSON and shows stdout to its users on failure, so every failure is one clear line
//! on stdout and a non-zero exit; logs are lager JSON on stderr (or `--log-file`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::config::Config;
use crate::daemon;
use crate::image::{self, ImageRef, PullOptions};
use crate::logging::{Level, Logger};
use crate::store::{self, IdMapping, ImageMeta, Store, StoreMeta};
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
        /// User name for the registry (with --password)
        #[arg(long)]
        username: Option<String>,
        /// Password for the registry (with --username)
        #[arg(long)]
        password: Option<String>,
        /// A registry (HOST[:PORT]) whose TLS certificate is not verified, or else reached over plain HTTP (repeatable)
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
        insecure_registries: Vec<String>,
        /// Remove unused layer volumes before creating (see `clean`)
        #[arg(long, conflicts_with = "without_clean")]
        with_clean: bool,
        /// Do not clean before creating, whatever the config file says
        #[arg(long)]
        without_clean: bool,
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
    /// The store's capacity, as JSON.
    Capacity,
    /// Remove every image and the store.
    DeleteStore,
    /// The per-image FUSE daemon `create` starts.
    #[command(hide = true)]
    ServeImage { id: String },
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => return crate::usage::report(&e, &args),
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
            Logger::new(l, log_file.as_deref()).with_context(|| "open log file".to_string())
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
    let name = command_name(&cli.cmd);
    let log = logger.session(name);
    log.debug("starting", json!({ "store": store.root() }));
    match run(cli.cmd, &store, &config, &log, show_progress) {
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
        Cmd::Capacity => "capacity",
        Cmd::DeleteStore => "delete-store",
        Cmd::ServeImage { .. } => "serve-image",
    }
}

/// Runs one command; `Some(text)` goes to stdout.
fn run(
    cmd: Cmd,
    store: &Store,
    config: &Config,
    log: &Logger,
    show_progress: bool,
) -> anyhow::Result<Option<String>> {
    match cmd {
        Cmd::InitStore {
            uid_mappings,
            gid_mappings,
            store_size_bytes,
            ..
        } => {
            // Without root, or as root in a user namespace that cannot map an image's owners
            // (`unshare -Ur`), layers record owners in xattrs instead of chown.
            let rootless = unsafe { libc::geteuid() } != 0 || !crate::host::maps_image_ids();
            // Run as yourself, the container's root is you unless mappings say otherwise.
            let me = |id: u32| {
                vec![IdMapping {
                    container: 0,
                    host: id,
                    size: 1,
                }]
            };
            let (uid_mappings, gid_mappings) =
                if rootless && uid_mappings.is_empty() && gid_mappings.is_empty() {
                    (
                        me(unsafe { libc::geteuid() }),
                        me(unsafe { libc::getegid() }),
                    )
                } else {
                    (uid_mappings, gid_mappings)
                };
            let meta = StoreMeta {
                uid_mappings,
                gid_mappings,
                store_size_bytes: store_size_bytes.or(config.store_size()).unwrap_or(0),
                rootless,
            };
            store.init(&meta)?;
            log.info("initialised", json!({ "store": store.root() }));
            Ok(None)
        }
        Cmd::Create {
            disk_limit_size_bytes,
            exclude_image_from_quota,
            username,
            password,
            mut insecure_registries,
            with_clean,
            without_clean,
            threshold_bytes,
            skip_layer_validation,
            with_mount: _,
            without_mount,
            image,
            id,
        } => {
            insecure_registries.extend(config.create.insecure_registries.iter().cloned());
            let opts = PullOptions {
                username,
                password,
                insecure_registries,
                skip_layer_validation: skip_layer_validation || config.create.skip_layer_validation,
                remote_layer_certs: config.create.remote_layer_client_certificates_path.clone(),
            };
            if without_mount || config.create.without_mount {
                // A FUSE rootfs cannot be handed to the caller to mount: always serve it.
                log.info(
                    "without-mount-ignored",
                    json!({ "reason": "a FUSE rootfs is mounted by its daemon" }),
                );
            }
            let clean = (with_clean || config.create.with_clean) && !without_clean;
            let req = CreateRequest {
                image,
                id,
                opts,
                disk_limit: disk_limit_size_bytes.or(config.disk_limit()).unwrap_or(0),
                exclude: exclude_image_from_quota || config.create.exclude_image_from_quota,
                clean: clean.then(|| threshold_bytes.or(config.clean_threshold())),
                ignore: config.clean.ignore_images.clone(),
                progress: show_progress,
            };
            create(store, req, log).map(Some)
        }
        Cmd::Delete { id } => {
            store.meta()?;
            // Not only complete images: also one a killed create left half-made, as Garden
            // deletes what it failed to create.
            let Some(id) = store.id_of(&id) else {
                log.info("image-not-found", json!({ "id": id }));
                return Ok(None);
            };
            let _g = store.lock(false)?;
            if store.delete_image(&id)? {
                log.info("deleted", json!({ "id": id }));
            } else {
                log.info("image-not-found", json!({ "id": id }));
            }
            Ok(None)
        }
        Cmd::Stats { id } => {
            store.meta()?;
            let found = store
                .find_image(&id)
                .with_context(|| format!("image not found: {id}"))?;
            Ok(Some(
                json!({ "disk_usage": store.stats(&found)? }).to_string(),
            ))
        }
        Cmd::Clean {
            threshold_bytes,
            mut ignore_images,
        } => {
            store.meta()?;
            ignore_images.extend(config.clean.ignore_images.iter().cloned());
            let _g = store.lock(true)?;
            store.sweep();
            let removed =
                store.clean(threshold_bytes.or(config.clean_threshold()), &ignore_images)?;
            log.info("cleaned", json!({ "volumes": removed }));
            Ok(None)
        }
        Cmd::List { json } => {
            store.meta()?;
            let ids = store.image_ids()?;
            if ids.is_empty() && !json {
                return Ok(Some("Store empty".into()));
            }
            let mut rows = Vec::new();
            for id in ids {
                // An image deleted while we list (before or while we ask its daemon) is not
                // listed.
                let Some(meta) = store.image_meta_if_present(&id)? else {
                    continue;
                };
                let (state, status) = daemon::state(store, &id);
                if store.find_image(&id).is_none() {
                    continue;
                }
                rows.push(json!({
                    "id": id,
                    "path": store.image_dir(&id),
                    "state": state.to_string(),
                    "exclusive_bytes_used": status.map(|s| s.used),
                    "quota_size_bytes": meta.disk_limit,
                    "exclude_image_from_quota": meta.exclude_image_from_quota,
                }));
            }
            if json {
                return Ok(Some(serde_json::Value::Array(rows).to_string()));
            }
            let lines: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "{}\t{}",
                        r["path"].as_str().unwrap_or(""),
                        r["state"].as_str().unwrap_or("")
                    )
                })
                .collect();
            Ok(Some(lines.join("\n")))
        }
        Cmd::Remount { ids } => {
            store.meta()?;
            let _g = store.lock(false)?;
            let ids = if ids.is_empty() {
                store.image_ids()?
            } else {
                ids.iter()
                    .map(|i| {
                        store
                            .find_image(i)
                            .with_context(|| format!("image not found: {i}"))
                    })
                    .collect::<anyhow::Result<_>>()?
            };
            let mut served = Vec::new();
            for id in ids {
                if daemon::remount(store, &id)? {
                    log.info("remounted", json!({ "id": id }));
                    served.push(store.image_dir(&id).join("rootfs").display().to_string());
                }
            }
            Ok((!served.is_empty()).then(|| served.join("\n")))
        }
        Cmd::Capacity => {
            // GrootFS answers from its config alone; without one, the store says.
            let cap = match config.store_size() {
                Some(n) => n,
                None => match store.meta()?.store_size_bytes {
                    0 => fs_size(store.root())?,
                    n => n,
                },
            };
            Ok(Some(json!({ "capacity": cap }).to_string()))
        }
        Cmd::DeleteStore => {
            if store.root().join("store.json").exists() {
                let _g = store.lock(true)?;
                store.delete_store()?;
            }
            Ok(None)
        }
        Cmd::ServeImage { id } => {
            crate::daemon::serve(store, &id)?;
            Ok(None)
        }
    }
}

struct CreateRequest {
    image: String,
    id: String,
    opts: PullOptions,
    disk_limit: u64,
    exclude: bool,
    /// Show a progress bar on stderr (a terminal, and no log level asked for).
    progress: bool,
    /// `Some(threshold)` to clean before creating.
    clean: Option<Option<u64>>,
    ignore: Vec<String>,
}

fn create(store: &Store, req: CreateRequest, log: &Logger) -> anyhow::Result<String> {
    store.meta()?;
    store.check_new_id(&req.id)?;
    // Say what is missing before pulling anything.
    daemon::preflight()?;
    crate::host::check_mountable(&store.tmp_path("mount-probe")).map_err(anyhow::Error::msg)?;
    if !store.meta()?.rootless && !crate::host::maps_image_ids() {
        anyhow::bail!(
            "the image's owners cannot be set: {}",
            crate::host::narrow_namespace_advice()
        );
    }
    if let Some(threshold) = req.clean {
        let _g = store.lock(true)?;
        store.sweep();
        let removed = store.clean(threshold, &req.ignore)?;
        log.info("cleaned", json!({ "volumes": removed }));
    }
    let _g = store.lock(false)?;
    let image_ref = ImageRef::parse(&req.image)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start async runtime")?;
    log.info("resolving", json!({ "image": req.image }));
    let resolved = rt.block_on(image::resolve(&image_ref, &req.opts))?;
    let quota = (req.disk_limit > 0 && !req.exclude).then_some(req.disk_limit);
    log.info("pulling", json!({ "layers": resolved.layers.len() }));
    let bar = req.progress.then(|| {
        let b = indicatif::ProgressBar::new(resolved.layers.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} layers")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b.set_message(format!("pulling {}", req.image));
        b
    });
    let pulled = rt.block_on(store.pull(&resolved, &req.image, quota, bar.as_ref()));
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let layers = pulled?;
    let spec = ImageMeta {
        id: req.id.clone(),
        image: req.image.clone(),
        layers,
        env: resolved.env.clone(),
        disk_limit: req.disk_limit,
        exclude_image_from_quota: req.exclude,
    };
    let rootfs = store.create_image(&spec)?;
    log.info("created", json!({ "id": req.id, "rootfs": rootfs }));
    Ok(json!({
        "root": { "path": rootfs },
        // No `mounts` key: Go callers test `Mounts != nil`, and a FUSE rootfs has none.
        "process": { "env": resolved.env },
    })
    .to_string())
}

fn fs_size(p: &std::path::Path) -> anyhow::Result<u64> {
    let st = store::statvfs(p)?;
    Ok(st.f_blocks * st.f_frsize)
}
