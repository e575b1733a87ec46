#!/usr/bin/env bash
# Deploy the taxi pipeline to a Google Cloud project (README, "Deploy to Google Cloud").
# Safe to run again: each step reads first and changes only what differs. The resources are declared in infra/resources.py.
#
#   ./deploy.sh --project P --region R [--bucket B] [--dataset D] [--alert-email E] [--with-ui] [--dry-run]
#     [--warehouse postgres --cloudsql-instance PROJECT:REGION:NAME [--db-name N] [--db-user U] [--db-secret S]]
#   ./deploy.sh --project P --region R --destroy [--delete-data] [--warehouse postgres ...] [--dry-run]
# --warehouse postgres: the functions (and the UI) use Cloud SQL for PostgreSQL (unix socket through Cloud
# Run's Cloud SQL connection; password from the Secret Manager secret S, default taxi-pipeline-db-password,
# which you create: printf %s PASSWORD | gcloud secrets create S --data-file=-).
set -euo pipefail

usage() { sed -n '5,7s/^# *//p' "$0" >&2; exit "${1:-2}"; }
die() { echo "deploy.sh: $*" >&2; exit 1; }

PROJECT="" REGION="" BUCKET="" DATASET="taxi" ALERT_EMAIL="" DRY_RUN=0 DESTROY=0 DELETE_DATA=0 WITH_UI=0
WAREHOUSE=bigquery CLOUDSQL_INSTANCE="" DB_NAME=taxi DB_USER=taxi-pipeline DB_SECRET=taxi-pipeline-db-password
while (($#)); do
  case "$1" in
    --project | --region | --bucket | --dataset | --alert-email | --warehouse | --cloudsql-instance | \
      --db-name | --db-user | --db-secret)
      (($# > 1)) || usage
      declare "$(tr 'a-z-' 'A-Z_' <<<"${1#--}")=$2"
      shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --destroy) DESTROY=1; shift ;;
    --delete-data) DELETE_DATA=1; shift ;;
    --with-ui) WITH_UI=1; shift ;;
    -h | --help) usage 0 ;;
    *) echo "deploy.sh: unknown argument $1" >&2; usage ;;
  esac
done
[[ -n $PROJECT && -n $REGION ]] || usage
((DELETE_DATA == 0 || DESTROY)) || die "--delete-data goes with --destroy"
((WITH_UI == 0 || DESTROY == 0)) || die "--with-ui goes with a deploy (--destroy removes the UI too)"
case $WAREHOUSE in
  bigquery) [[ -z $CLOUDSQL_INSTANCE ]] || die "--cloudsql-instance goes with --warehouse postgres" ;;
  postgres)
    [[ $CLOUDSQL_INSTANCE =~ ^[a-z][-a-z0-9.:]*:[a-z][-a-z0-9]*:[a-z][-a-z0-9]*$ ]] ||
      die "--warehouse postgres needs --cloudsql-instance PROJECT:REGION:NAME (the instance's connection name)"
    for name in "$DB_NAME" "$DB_USER" "$DB_SECRET"; do
      [[ $name =~ ^[A-Za-z_][-A-Za-z0-9_]*$ ]] || die "invalid database, user or secret name: $name"
    done ;;
  *) die "--warehouse is bigquery (the default) or postgres" ;;
esac
BUCKET=${BUCKET:-$PROJECT-taxi-lake}
cd "$(dirname "${BASH_SOURCE[0]}")"
PYTHON=${TAXI_PIPELINE_PYTHON:-.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3

# An action is printed (stderr) and, unless --dry-run, done. A probe only reads, never in --dry-run.
run() { printf "+%s\n" "$(printf " %q" "$@")" >&2; ((DRY_RUN)) || "$@" </dev/null; }
probe() { ((DRY_RUN == 0)) && gcloud "$@" --project="$PROJECT" </dev/null 2>/dev/null; }
declare -A POLICIES=() # "SURFACE RESOURCE FLAGS" -> "role<TAB>member" lines, read once
has_binding() { # has_binding MEMBER ROLE "SURFACE" RESOURCE [FLAGS...]
  local member=$1 role=$2 key="$3 $4 ${*:5}" surface
  read -r -a surface <<<"$3"
  if [[ -z ${POLICIES[$key]+set} ]]; then
    POLICIES[$key]=$(probe "${surface[@]}" get-iam-policy "${@:4}" --flatten='bindings[].members' \
      --format='value(bindings.role,bindings.members)' || true)
  fi
  grep -qxF "$role"$'\t'"$member" <<<"${POLICIES[$key]}"
}
grant() { # grant MEMBER ROLE "SURFACE" RESOURCE [FLAGS...]
  local member=$1 role=$2 resource=$4 surface
  has_binding "$@" && return
  read -r -a surface <<<"$3"
  shift 4
  [[ ${surface[0]} == projects ]] && set -- "$@" --condition=None
  run gcloud "${surface[@]}" add-iam-policy-binding "$resource" "$@" --member="$member" \
    --role="$role" --project="$PROJECT" --quiet >/dev/null
}
provision() {
  local args=("$1" --project="$PROJECT" --region="$REGION" --bucket="$BUCKET" --dataset="$DATASET")
  ((DRY_RUN)) && args+=(--dry-run)
  ((DELETE_DATA)) && args+=(--delete-data)
  [[ $1 == data ]] && ((WITH_UI)) && args+=(--with-ui)
  TAXI_PIPELINE_ACCESS_TOKEN=$token "$PYTHON" -m infra.provision "${args[@]}"
}

# ---------------------------------------------------------------------------- prerequisites
command -v gcloud >/dev/null || die "gcloud is missing: install the Google Cloud CLI, https://cloud.google.com/sdk/docs/install"
"$PYTHON" -c 'import infra.provision' 2>/dev/null ||
  die "$PYTHON cannot import infra.provision: python3 -m venv .venv && .venv/bin/pip install -e ."
token="" account="" number=PROJECT_NUMBER gcs_agent=GCS_SERVICE_AGENT
if ((DRY_RUN == 0)); then
  account=$(gcloud auth list --filter=status:ACTIVE --format='value(account)' 2>/dev/null | head -n1)
  [[ -n $account ]] || die "not logged in: run gcloud auth login"
  [[ $(probe billing projects describe "$PROJECT" --format='value(billingEnabled)') == True ]] ||
    die "billing is off for $PROJECT (or $account cannot see the project): link a billing account"
  token=$(gcloud auth print-access-token)
  number=$(probe projects describe "$PROJECT" --format='value(projectNumber)')
  if ((DESTROY == 0)) && ! probe storage buckets list --format='value(name)' | grep -qxF "$BUCKET"; then
    if ! err=$(gcloud storage buckets describe "gs://$BUCKET" --format='value(name)' 2>&1); then
      [[ $err == *"not found"* || $err == *404* ]] || die "bucket name $BUCKET is unusable ($err): pass --bucket NAME"
    else
      die "bucket name $BUCKET is taken by another project: pass --bucket NAME"
    fi
  fi
fi
# The database password is yours to keep in Secret Manager: checked, never created here.
if [[ $WAREHOUSE == postgres ]] && ((DRY_RUN == 0 && DESTROY == 0)) &&
  ! probe secrets describe "$DB_SECRET" --format='value(name)' >/dev/null; then
  die "the database password secret $DB_SECRET is missing (or the Secret Manager API is off): gcloud services enable secretmanager.googleapis.com --project=$PROJECT; printf %s 'PASSWORD' | gcloud secrets create $DB_SECRET --data-file=- --project=$PROJECT"
fi
# Only an --alert-email given on the command line moves an existing alert policy (see the end).
ALERT_EMAIL_GIVEN=${ALERT_EMAIL:+1}
ALERT_EMAIL=${ALERT_EMAIL:-${account:-ACCOUNT}}
spec=$("$PYTHON" -m infra.provision spec --project="$PROJECT" --region="$REGION" --bucket="$BUCKET" --dataset="$DATASET")
lines() { awk -F'\t' -v k="$1" '$1 == k' <<<"$spec"; }
sa() { echo "$1@$PROJECT.iam.gserviceaccount.com"; }
IFS=$'\t' read -r _ METRIC POLICY FILTER < <(lines alert)
CHANNELS='type="email" AND userLabels.app="taxi-pipeline"'
# The alert policy as "NAME<TAB>CHANNEL;CHANNEL...", empty when absent.
policy_of() { probe alpha monitoring policies list --filter="displayName=\"$POLICY\"" --format='value(name,notificationChannels)' | head -n1; }

IFS=$'\t' read -r _ UI_SERVICE UI_ENTRY UI_MEMORY UI_TIMEOUT UI_MAX UI_ACCOUNT < <(lines ui-service)
UI_SECRET=$(lines ui-secret | cut -f2)

# ---------------------------------------------------------------------------- destroy
if ((DESTROY)); then
  # The web UI, if deployed (--with-ui): its service and token; its account goes below.
  if ((DRY_RUN)) || probe run services describe "$UI_SERVICE" --region="$REGION" --format='value(metadata.name)' >/dev/null; then
    run gcloud run services delete "$UI_SERVICE" --region="$REGION" --project="$PROJECT" --quiet
  fi
  if ((DRY_RUN)) || probe secrets describe "$UI_SECRET" --format='value(name)' >/dev/null; then
    run gcloud secrets delete "$UI_SECRET" --project="$PROJECT" --quiet
  fi
  while IFS=$'\t' read -r _ fn _; do
    if ((DRY_RUN)) || probe functions describe "$fn" --region="$REGION" --format='value(name)' >/dev/null; then
      run gcloud functions delete "$fn" --region="$REGION" --project="$PROJECT" --quiet
    fi
  done < <(lines function)
  provision destroy
  policy=$(policy_of | cut -f1 || true)
  if ((DRY_RUN)) || [[ -n $policy ]]; then
    run gcloud alpha monitoring policies delete "${policy:-POLICY_NAME}" --project="$PROJECT" --quiet
  fi
  if ((DRY_RUN)) || probe logging metrics describe "$METRIC" >/dev/null; then
    run gcloud logging metrics delete "$METRIC" --project="$PROJECT" --quiet
  fi
  channels=$(probe beta monitoring channels list --filter="$CHANNELS" --format='value(name)' || true)
  if ((DRY_RUN)); then channels=CHANNEL; fi
  for channel in $channels; do
    run gcloud beta monitoring channels delete "$channel" --project="$PROJECT" --quiet
  done
  while IFS=$'\t' read -r kind id role; do
    member=serviceAccount:$(sa "$id")
    if [[ $kind == project-role || $kind == ui-project-role ]] &&
      { ((DRY_RUN)) || has_binding "$member" "$role" projects "$PROJECT"; }; then
      run gcloud projects remove-iam-policy-binding "$PROJECT" --member="$member" --role="$role" \
        --condition=None --project="$PROJECT" --quiet >/dev/null
    fi
    # A kept bucket would otherwise list the deleted accounts forever.
    if [[ $kind == bucket-role ]] && ((DELETE_DATA == 0)) &&
      { ((DRY_RUN)) || has_binding "$member" "$role" "storage buckets" "gs://$BUCKET"; }; then
      run gcloud storage buckets remove-iam-policy-binding "gs://$BUCKET" --member="$member" \
        --role="$role" --project="$PROJECT" --quiet >/dev/null
    fi
  done <<<"$spec"
  if [[ $WAREHOUSE == postgres ]]; then # the functions' and the UI's access to the database
    for id in $(lines function | cut -f8) "$UI_ACCOUNT"; do
      member=serviceAccount:$(sa "$id")
      if ((DRY_RUN)) || has_binding "$member" roles/cloudsql.client projects "$PROJECT"; then
        run gcloud projects remove-iam-policy-binding "$PROJECT" --member="$member" \
          --role=roles/cloudsql.client --condition=None --project="$PROJECT" --quiet >/dev/null
      fi
      # The secret is yours: it stays, without the deleted accounts' access.
      if ((DRY_RUN)) || has_binding "$member" roles/secretmanager.secretAccessor secrets "$DB_SECRET"; then
        run gcloud secrets remove-iam-policy-binding "$DB_SECRET" --member="$member" \
          --role=roles/secretmanager.secretAccessor --project="$PROJECT" --quiet >/dev/null
      fi
    done
  fi
  while IFS=$'\t' read -r _ id _; do
    if ((DRY_RUN)) || probe iam service-accounts describe "$(sa "$id")" --format='value(email)' >/dev/null; then
      run gcloud iam service-accounts delete "$(sa "$id")" --project="$PROJECT" --quiet
    fi
  done < <(lines account; lines ui-account)
  ((DELETE_DATA)) || echo "deploy.sh: kept gs://$BUCKET and dataset $DATASET (add --delete-data to remove them)" >&2
  echo "deploy.sh: removed the pipeline from $PROJECT" >&2
  exit 0
fi

# ---------------------------------------------------------------------------- deploy
enabled=$(probe services list --enabled --format='value(config.name)' || true)
apis=$( { lines api; ((WITH_UI == 0)) || lines ui-api; } | cut -f2)
[[ $WAREHOUSE == bigquery ]] || apis+=$'\n'sqladmin.googleapis.com$'\n'secretmanager.googleapis.com
missing=$(awk '!seen[$0]++' <<<"$apis" | grep -vxF -f <(printf '%s\n' "$enabled") || true)
# shellcheck disable=SC2086  # one word per API
[[ -z $missing ]] || run gcloud services enable $missing --project="$PROJECT" --quiet
while IFS=$'\t' read -r _ id description; do
  probe iam service-accounts describe "$(sa "$id")" --format='value(email)' >/dev/null ||
    run gcloud iam service-accounts create "$id" --display-name="taxi-pipeline $description" \
      --project="$PROJECT" --quiet
done < <(lines account; ((WITH_UI == 0)) || lines ui-account)
provision data
# The taxi zone lookup, through the lake into its table: the CLI's own `zones --cloud`, which
# loads it the first time only (--if-missing), with the same token as the provisioning. Cloud SQL
# is reached through its socket from Cloud Run only: there the command is the user's (see the end).
if [[ $WAREHOUSE == bigquery ]]; then
  TAXI_PIPELINE_ACCESS_TOKEN=$token TAXI_PIPELINE_LAKE_URL=gs://$BUCKET \
    TAXI_PIPELINE_WAREHOUSE_URL=bigquery://$PROJECT/$DATASET TAXI_PIPELINE_GCP_PROJECT=$PROJECT \
    TAXI_PIPELINE_BIGQUERY_LOCATION=$REGION run "$PYTHON" -m taxi_pipeline.cli.app zones --cloud --if-missing
fi
((DRY_RUN)) || gcs_agent=$(gcloud storage service-agent --project="$PROJECT" </dev/null)
PUBSUB_AGENT=serviceAccount:service-$number@gcp-sa-pubsub.iam.gserviceaccount.com
TRIGGER=$(sa taxi-trigger)
grant "serviceAccount:$gcs_agent" roles/pubsub.publisher projects "$PROJECT"
grant "$PUBSUB_AGENT" roles/pubsub.publisher "pubsub topics" ingest-dead-letter
while IFS=$'\t' read -r kind id a b; do
  case $kind in
    project-role) grant "serviceAccount:$(sa "$id")" "$a" projects "$PROJECT" ;;
    bucket-role) grant "serviceAccount:$(sa "$id")" "$a" "storage buckets" "gs://$BUCKET" ;;
    topic-role) grant "serviceAccount:$(sa "$id")" "$b" "pubsub topics" "$a" ;;
    ui-project-role) ((WITH_UI == 0)) || grant "serviceAccount:$(sa "$id")" "$a" projects "$PROJECT" ;;
    ui-topic-role) ((WITH_UI == 0)) || grant "serviceAccount:$(sa "$id")" "$b" "pubsub topics" "$a" ;;
  esac
done <<<"$spec"
if [[ $WAREHOUSE == postgres ]]; then # every function reads and writes the run history
  while IFS=$'\t' read -r _ _ _ _ _ _ _ id; do
    grant "serviceAccount:$(sa "$id")" roles/cloudsql.client projects "$PROJECT"
    grant "serviceAccount:$(sa "$id")" roles/secretmanager.secretAccessor secrets "$DB_SECRET"
  done < <(lines function)
fi

# The function source: functions/ with its pinned requirements, symlinks (schedules.toml) resolved.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
tar -C functions --dereference --exclude=__pycache__ --exclude='*.egg-info' -cf - \
  main.py requirements.txt taxi_pipeline | tar -C "$src" -xf -
digest=$(cd "$src" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)
env_vars=$(lines env | cut -f2)
if [[ $WAREHOUSE == postgres ]]; then # the Cloud SQL socket Cloud Run mounts under /cloudsql
  url="postgresql://$DB_USER@/$DB_NAME?host=/cloudsql/$CLOUDSQL_INSTANCE"
  IFS=, read -r -a pairs <<<"$env_vars"
  for i in "${!pairs[@]}"; do
    [[ ${pairs[i]} != TAXI_PIPELINE_WAREHOUSE_URL=* ]] || pairs[i]=TAXI_PIPELINE_WAREHOUSE_URL=$url
  done
  env_vars=$(IFS=,; echo "${pairs[*]}")
fi
while IFS=$'\t' read -r _ fn entry trigger memory timeout max_instances account; do
  args=(--gen2 --region="$REGION" --runtime=python312 --source="$src" --entry-point="$entry"
    --service-account="$(sa "$account")" --trigger-service-account="$TRIGGER" --retry
    --memory="$memory" --timeout="$timeout" --max-instances="$max_instances"
    --set-env-vars="$env_vars" --no-allow-unauthenticated)
  [[ $WAREHOUSE == bigquery ]] ||
    args+=(--set-secrets="TAXI_PIPELINE_WAREHOUSE_PASSWORD=$DB_SECRET:latest")
  if [[ $trigger == topic:* ]]; then
    args+=(--trigger-topic="${trigger#topic:}")
  else
    args+=(--trigger-event-filters=type=google.cloud.storage.object.v1.finalized
      --trigger-event-filters=bucket="$BUCKET" --trigger-location="$REGION")
  fi
  # The label fingerprints source + flags: an unchanged function is not redeployed.
  label=$(printf '%s %s' "$digest" "${args[*]/--source=*/}" | sha256sum | cut -c1-12)
  current=$(probe functions describe "$fn" --region="$REGION" --format='value(state,labels.deploy_spec)' || true)
  if [[ $current != "ACTIVE"$'\t'"$label" ]]; then
    run gcloud functions deploy "$fn" "${args[@]}" --update-labels=deploy_spec="$label" \
      --project="$PROJECT" --quiet
  fi
  grant "serviceAccount:$TRIGGER" roles/run.invoker "run services" "$fn" --region="$REGION"
  if [[ $WAREHOUSE == postgres ]]; then # gcloud functions deploy has no Cloud SQL flag
    attached=$(probe run services describe "$fn" --region="$REGION" \
      --format='value(spec.template.metadata.annotations."run.googleapis.com/cloudsql-instances")' || true)
    [[ $attached == "$CLOUDSQL_INSTANCE" ]] ||
      run gcloud run services update "$fn" --region="$REGION" \
        --set-cloudsql-instances="$CLOUDSQL_INSTANCE" --project="$PROJECT" --quiet
  fi
done < <(lines function)

# Eventarc may recreate a trigger's subscription on a redeploy: the policy is re-applied each time.
for subscription in $(provision dead-letters); do
  grant "$PUBSUB_AGENT" roles/pubsub.subscriber "pubsub subscriptions" "$subscription"
done
provision schedules

# The web UI (--with-ui): a Cloud Run service from the same source, behind IAM, with a token for
# its write actions kept in Secret Manager (made once; never printed).
if ((WITH_UI)); then
  if ((DRY_RUN)) || ! probe secrets describe "$UI_SECRET" --format='value(name)' >/dev/null; then
    token_file=TOKEN_FILE
    if ((DRY_RUN == 0)); then
      token_file=$(mktemp) # 0600, outside the uploaded source
      head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$token_file"
    fi
    run gcloud secrets create "$UI_SECRET" --replication-policy=automatic --data-file="$token_file" \
      --labels=app=taxi-pipeline --project="$PROJECT" --quiet
    rm -f "$token_file"
  fi
  grant "serviceAccount:$(sa "$UI_ACCOUNT")" roles/secretmanager.secretAccessor secrets "$UI_SECRET"
  ui_env=$env_vars ui_secrets=TAXI_PIPELINE_UI_TOKEN=$UI_SECRET:latest ui_sql=()
  if [[ $WAREHOUSE == postgres ]]; then
    # It reads the history in Cloud SQL (the functions' database user) and starts runs through
    # Pub/Sub: the bus URL tells it it is the cloud's UI, not an embedded pipeline.
    grant "serviceAccount:$(sa "$UI_ACCOUNT")" roles/cloudsql.client projects "$PROJECT"
    grant "serviceAccount:$(sa "$UI_ACCOUNT")" roles/secretmanager.secretAccessor secrets "$DB_SECRET"
    ui_env+=,TAXI_PIPELINE_BUS_URL=pubsub://$PROJECT
    ui_secrets+=,TAXI_PIPELINE_WAREHOUSE_PASSWORD=$DB_SECRET:latest
    ui_sql=(--set-cloudsql-instances="$CLOUDSQL_INSTANCE")
  fi
  args=(--source="$src" --region="$REGION" --service-account="$(sa "$UI_ACCOUNT")"
    --no-allow-unauthenticated --memory="$UI_MEMORY" --timeout="$UI_TIMEOUT" --max-instances="$UI_MAX"
    --set-env-vars="$ui_env" --set-secrets="$ui_secrets" "${ui_sql[@]}"
    --set-build-env-vars="GOOGLE_ENTRYPOINT=$UI_ENTRY,GOOGLE_PYTHON_VERSION=3.12.x")
  label=$(printf '%s %s' "$digest" "${args[*]/--source=*/}" | sha256sum | cut -c1-12)
  current=$(probe run services describe "$UI_SERVICE" --region="$REGION" --format='value(metadata.labels.deploy_spec)' || true)
  if [[ $current != "$label" ]]; then
    run gcloud run deploy "$UI_SERVICE" "${args[@]}" --update-labels=deploy_spec="$label" \
      --project="$PROJECT" --quiet
  fi
fi

# Alert: a log-based metric on the handlers' ERROR line and a policy that mails a person.
current=$(probe logging metrics describe "$METRIC" --format='value(filter)' || echo "(absent)")
if [[ $current == "(absent)" ]]; then
  run gcloud logging metrics create "$METRIC" --description="taxi-pipeline runs that failed" \
    --log-filter="$FILTER" --project="$PROJECT" --quiet
elif [[ $current != "$FILTER" ]]; then
  run gcloud logging metrics update "$METRIC" --log-filter="$FILTER" --project="$PROJECT" --quiet
fi
# The policy mails one address. Given --alert-email, its channels are set to that address's
# alone; without it an existing policy is left as it is, so a colleague's redeploy neither moves
# the alert to their gcloud account nor drops channels added by hand. A first deploy mails the account.
policy=$(policy_of || true)
if [[ -z $policy || -n $ALERT_EMAIL_GIVEN ]]; then
  channel=$(probe beta monitoring channels list --format='value(name)' --filter="$CHANNELS AND labels.email_address=\"$ALERT_EMAIL\"" | head -n1 || true)
  if [[ -z $channel ]]; then
    channel=$(run gcloud beta monitoring channels create --display-name="taxi-pipeline $ALERT_EMAIL" \
      --type=email --channel-labels=email_address="$ALERT_EMAIL" --user-labels=app=taxi-pipeline \
      --format='value(name)' --project="$PROJECT" --quiet)
    channel=${channel:-CHANNEL}
  fi
  if [[ -z $policy ]]; then
    run gcloud alpha monitoring policies create --display-name="$POLICY" --combiner=OR \
      --condition-display-name="failed runs" --if='> 0' --duration=0s --trigger-count=1 \
      --condition-filter="metric.type=\"logging.googleapis.com/user/$METRIC\" AND resource.type=\"cloud_run_revision\"" \
      --aggregation='{"alignmentPeriod": "300s", "perSeriesAligner": "ALIGN_SUM"}' \
      --notification-channels="$channel" --project="$PROJECT" --quiet \
      --documentation="A taxi-pipeline run failed: read its ERROR line (jsonPayload.alert) and the pipeline_runs table."
  elif [[ ${policy#*$'\t'} != "$channel" ]]; then
    run gcloud alpha monitoring policies update "${policy%%$'\t'*}" --set-notification-channels="$channel" \
      --project="$PROJECT" --quiet
  fi
fi
if [[ $WAREHOUSE == postgres ]]; then
  echo "deploy.sh: the pipeline runs in $PROJECT ($REGION): lake gs://$BUCKET, warehouse Cloud SQL $CLOUDSQL_INSTANCE database $DB_NAME" >&2
  echo "deploy.sh: load the taxi zones once through the Cloud SQL Auth Proxy (cloud-sql-proxy $CLOUDSQL_INSTANCE):" \
    "TAXI_PIPELINE_LAKE_URL=gs://$BUCKET TAXI_PIPELINE_WAREHOUSE_URL=postgresql://$DB_USER@127.0.0.1:5432/$DB_NAME" \
    "taxi-pipeline zones --cloud --if-missing" >&2
else
  echo "deploy.sh: the pipeline runs in $PROJECT ($REGION): lake gs://$BUCKET, dataset $DATASET" >&2
fi
if ((WITH_UI)); then
  echo "deploy.sh: web UI: gcloud run services proxy $UI_SERVICE --region=$REGION --project=$PROJECT --port=8765," \
    "then http://localhost:8765 (token for its forms: gcloud secrets versions access latest" \
    "--secret=$UI_SECRET --project=$PROJECT)" >&2
fi
