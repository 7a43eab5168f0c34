#!/usr/bin/env bash
# Runs eddy's whole test suite: unit tests, the sqllogictest files over the
# Postgres protocol, durability (SIGKILL) tests, real clients (psql,
# psycopg, pgjdbc) and Kafka tests against a real broker. Installs what the
# tests need when it is missing and starts the Kafka broker
# (scripts/kafka.sh: Apache Kafka's jars from Maven Central, KRaft, one
# node on 127.0.0.1:9092; left running for the next run).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
need_apt=()
command -v psql >/dev/null || need_apt+=(postgresql-client)
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
python3 -c "import psycopg" 2>/dev/null || python3 -m pip install -q "psycopg[binary]==3.3.9"
# delta-rs's Python reader: the independent reader of tests/delta.rs.
python3 -c "import deltalake, pyarrow" 2>/dev/null || python3 -m pip install -q "deltalake==1.1.4" "pyarrow==26.0.1"
# pgjdbc for the JDBC client test (Java 17 and Maven are on the machine).
[ -f "$HOME/.m2/repository/org/postgresql/postgresql/42.7.14/postgresql-42.7.14.jar" ] ||
  mvn -q dependency:get -Dartifact=org.postgresql:postgresql:42.7.14

# A real Kafka broker for tests/kafka.rs (EDDY_TEST_KAFKA overrides it).
if [ -z "${EDDY_TEST_KAFKA:-}" ]; then scripts/kafka.sh start; fi

# Build output lives outside the clone so repeated runs reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/eddy/target}"
# The benchmarks are not run here, but they must keep compiling.
cargo build --locked --benches
cargo test --locked "$@"
