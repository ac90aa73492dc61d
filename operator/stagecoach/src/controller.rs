//! `stagecoach controller`: the operator. Wiring only; the controller is
//! `stagecoach_controller` (kubeconfig or in-cluster configuration, all namespaces unless
//! `--namespace` names one).

use stagecoach_controller::pods::UserNamespaces;

/// Arguments of `stagecoach controller`.
#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// Watch only this namespace (default: every namespace).
    #[arg(long, value_name = "NAMESPACE")]
    namespace: Option<String>,
    /// The cache claim each namespace gets when a build names none in spec.cache.
    #[arg(long, value_name = "NAME", default_value = "stagecoach-cache")]
    cache_claim: String,
    /// Its size (a Kubernetes quantity).
    #[arg(long, value_name = "QUANTITY", default_value = "20Gi")]
    cache_size: String,
    /// Its storage class (default: the cluster's default class).
    #[arg(long, value_name = "CLASS")]
    cache_storage_class: Option<String>,
    /// Its access mode: ReadWriteOnce (every class) or ReadWriteMany (pods on any node).
    #[arg(long, value_name = "MODE", default_value = "ReadWriteOnce",
          value_parser = ["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"])]
    cache_access_mode: String,
    /// The operator's own image, pinned by digest (builder pods' init container).
    #[arg(long, value_name = "IMAGE", env = "STAGECOACH_OPERATOR_IMAGE")]
    operator_image: String,
    /// A registry (HOST or HOST:PORT) reached over plain HTTP when resolving base images
    /// (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure_registries: Vec<String>,
    /// At most this many stage pods of one build run at once; ready stages beyond it wait.
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_parallel_pods: u16,
    /// How long a finished build's pods (and so its logs) stay, e.g. 24h, 30m; `never`
    /// keeps them until the spec changes or the build is deleted.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_retention)]
    pod_retention: Retention,
    /// Serve /metrics, /healthz and /readyz here (e.g. 0.0.0.0:8080; none when absent).
    #[arg(long, value_name = "ADDRESS")]
    metrics_address: Option<std::net::SocketAddr>,
    /// Elect one active replica with a Lease in this namespace (run several replicas with
    /// it; without it the process reconciles at once and must be the only one).
    #[arg(long, value_name = "NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Requests and limits of a stage's container when the build sets no spec.resources,
    /// as JSON: {"requests":{"cpu":"500m","memory":"1Gi"},"limits":{"memory":"4Gi"}}.
    #[arg(long, value_name = "JSON", value_parser = parse_resources)]
    builder_resources: Option<Resources>,
    /// Stage pods in a user namespace (hostUsers: false), so root in a RUN is not root on
    /// the node: `auto` when every schedulable node's runtime reports support (containerd 2, runc 1.2
    /// or later), `required` always (builds wait while no node supports it), `off` never.
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = parse_user_namespaces)]
    user_namespaces: UserNamespaces,
    /// How often each cache claim is garbage-collected (a pod running `stagecoach gc`), e.g.
    /// 1h, 30m; `never` turns collection off.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_retention)]
    cache_gc_interval: Retention,
    /// Cache keys, RUN cache mounts and unreferenced blobs unused for longer are collected.
    #[arg(long, value_name = "DURATION", default_value = "168h", value_parser = stagecoach_api::parse_timeout)]
    cache_max_age: std::time::Duration,
    /// Then the least recently used go until the cache holds at most this share of its
    /// claim's capacity (percent; 0: no size limit).
    #[arg(long, value_name = "PERCENT", default_value_t = 80,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    cache_max_used_percent: u8,
    /// The most a git source's checked-out context may hold (a Kubernetes quantity of
    /// bytes, e.g. 4Gi); a larger one fails the build with SourceFetchFailed.
    #[arg(long, value_name = "QUANTITY", default_value = "4Gi", value_parser = parse_quantity)]
    max_context_size: u64,
    /// How long a registry that a build's base or COPY --from image is on may not answer
    /// before the build fails with ResolveFailed (it waits Pending meanwhile), e.g. 2m.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = stagecoach_api::parse_timeout)]
    unreachable_registry_timeout: std::time::Duration,
}

fn parse_quantity(text: &str) -> Result<u64, String> {
    stagecoach_controller::gc::parse_bytes(text).ok_or_else(|| {
        "a whole number of bytes with an optional suffix (Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E)".to_string()
    })
}

fn parse_user_namespaces(text: &str) -> Result<UserNamespaces, String> {
    UserNamespaces::parse(text).ok_or_else(|| "one of auto, required, off".to_string())
}

/// `--builder-resources`, parsed.
#[derive(Debug, Clone)]
struct Resources(stagecoach_controller::pods::ResourceRequirements);

fn parse_resources(text: &str) -> Result<Resources, String> {
    stagecoach_controller::pods::BuilderDefaults::parse_resources(text)
        .map(Resources)
        .map_err(|e| format!("not a ResourceRequirements object: {e}"))
}

/// `--pod-retention`: a duration, or none.
#[derive(Debug, Clone, Copy)]
struct Retention(Option<std::time::Duration>);

fn parse_retention(text: &str) -> Result<Retention, stagecoach_api::InvalidTimeout> {
    if text == "never" {
        return Ok(Retention(None));
    }
    stagecoach_api::parse_timeout(text).map(|d| Retention(Some(d)))
}

/// Names the operator image's binary on a cache volume (`bin/<key>`): a digest of the image
/// reference the stage pods' init containers run and of this executable. A new image, or a
/// tag moved to a new controller, is a new key, so a pod never runs an older stagecoach
/// from the cache than the controller that made its job. `None` when this executable cannot
/// be read: every stage pod then copies the binary in an init container.
fn binary_key(operator_image: &str) -> Option<String> {
    use std::io::Write as _;
    let mut exe = std::fs::File::open(std::env::current_exe().ok()?).ok()?;
    let mut hashing = stagecoach_oci::digest::HashingWriter::new(std::io::sink());
    hashing.write_all(operator_image.as_bytes()).ok()?;
    hashing.write_all(b"\n").ok()?;
    std::io::copy(&mut exe, &mut hashing).ok()?;
    let (_, digest, _) = hashing.finish();
    Some(digest.hex().chars().take(32).collect())
}

/// Runs the controller until SIGTERM or SIGINT.
pub fn run(args: &ControllerArgs) -> Result<(), stagecoach_controller::RunError> {
    let settings = stagecoach_controller::Settings {
        cache_claim: args.cache_claim.clone(),
        cache_size: args.cache_size.clone(),
        cache_storage_class: args.cache_storage_class.clone(),
        cache_access_mode: args.cache_access_mode.clone(),
        operator_image: args.operator_image.clone(),
        insecure_registries: args.insecure_registries.clone(),
        max_parallel_pods: usize::from(args.max_parallel_pods),
        pod_retention: args.pod_retention.0,
        metrics_address: args.metrics_address,
        leader_election_namespace: args.leader_election_namespace.clone(),
        builder: stagecoach_controller::pods::BuilderDefaults {
            resources: args.builder_resources.as_ref().map(|r| r.0.clone()),
            user_namespaces: args.user_namespaces,
        },
        max_context_bytes: Some(args.max_context_size),
        unreachable_registry_timeout: args.unreachable_registry_timeout,
        binary_key: binary_key(&args.operator_image),
        cache_gc: stagecoach_controller::gc::GcSettings {
            interval: args.cache_gc_interval.0,
            max_age: args.cache_max_age,
            max_used_percent: (args.cache_max_used_percent > 0)
                .then_some(args.cache_max_used_percent),
        },
    };
    stagecoach_controller::main(args.namespace.as_deref(), settings)
}
