#!/usr/bin/env bash
# Installs what the test suite needs (openssh-server, rsync, make, git,
# openssl to check the certificates cutover issues, python3 with a venv
# holding moto_server, a real S3 API, chromium and chromedriver for the
# admin UI's browser tests, the PostgreSQL server for the shared store),
# then builds the tests once and runs them: everything once, and the
# end-to-end suite a second time with its state in PostgreSQL. The tests
# start their own sshd workers on 127.0.0.x and PostgreSQL servers on
# 127.0.0.1 (run as the postgres user); nothing is left running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1 || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
command -v make >/dev/null 2>&1 || need+=(make)
command -v git >/dev/null 2>&1 || need+=(git)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# The admin UI's browser tests: headless Chromium through chromedriver.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# The shared store's tests: a real PostgreSQL server (initdb, postgres,
# psql, pg_dump), run as the postgres user the package creates.
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
# The server's tests compare token hashes with the system's sha256sum.
command -v sha256sum >/dev/null 2>&1 || need+=(coreutils)
if [ "${#need[@]}" -gt 0 ]; then
    echo "test.sh: installing ${need[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    # The tests make their own clusters: the package's default one, and
    # the server it would start, are not wanted.
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        $sudo mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# A real S3 API for the S3 store's tests: moto_server (with boto3, which
# the tests use to tamper with the bucket) in a venv under target/.
if [ ! -x target/moto-venv/bin/moto_server ]; then
    echo "test.sh: installing moto[server] into target/moto-venv"
    python3 -m venv target/moto-venv
    target/moto-venv/bin/pip install -q "moto[server]>=5.1.4"
fi

# The declared minimum Rust version holds for our code: clippy's
# incompatible_msrv lint refuses newer std APIs (dependencies are checked by
# a unit test). Clippy also keeps the code free of its other warnings.
cargo clippy --workspace --all-targets --locked -- -D warnings

cargo test --workspace --locked --no-run
cargo test --workspace --locked
# The same end-to-end tests with every project's state in PostgreSQL.
CUTOVER_TEST_BACKEND=postgres cargo test -p cutover-cli --test e2e --locked
