#!/bin/sh
# The NATS passwords of compose/docker-compose.yml, one per NATS user, written to compose/.env
# (mode 0600; created from .env.example if it does not exist). docker compose refuses to start
# until they are set: there are no default passwords (docs/deploy.md, "NATS authentication").
#
#   ./secrets.sh                          # fill in every password that is not set yet
#   ./secrets.sh --rotate NATS_LEDGER_PASSWORD   # replace one (then follow docs/deploy.md)
#
# A password is "p" and 48 hex digits (192 random bits): safe unquoted in a nats-server config
# and in the user:password of a URL. Set your own the same way (letters and digits, starting
# with a letter). Agents have no password: `setup` creates each agent's nkey.
set -eu
cd "$(dirname "$0")"

VARS="NATS_OPERATOR_PASSWORD NATS_IDENTITY_PASSWORD NATS_LEDGER_PASSWORD NATS_MEMORY_PASSWORD NATS_INGRESS_PASSWORD NATS_CLIENT_PASSWORD NATS_SYSTEM_PASSWORD NATS_ROUTE_PASSWORD"
rotate=""
if [ "${1:-}" = "--rotate" ]; then
    rotate="${2:?--rotate needs the variable to replace}"
    case " $VARS " in *" $rotate "*) ;; *) echo "unknown variable $rotate (one of: $VARS)" >&2; exit 2 ;; esac
elif [ $# -gt 0 ]; then
    echo "usage: $0 [--rotate NATS_..._PASSWORD]" >&2
    exit 2
fi

umask 077
[ -f .env ] || cp .env.example .env
chmod 600 .env

password() {
    printf 'p%s' "$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
}

for var in $VARS; do
    if grep -q "^$var=." .env && [ "$var" != "$rotate" ]; then
        continue
    fi
    grep -v "^$var=" .env >.env.tmp || true
    printf '%s=%s\n' "$var" "$(password)" >>.env.tmp
    mv .env.tmp .env
    echo "$var: new password in compose/.env"
done
