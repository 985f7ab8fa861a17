# Helpers shared by the CI scripts (.ci/run, .ci/nightly.sh, .ci/fuzz.sh), which source this
# file: a step's name and duration printed the same way everywhere, and one way to skip a tier.
# Not a script of its own.

# Runs one step, printing `::: NAME` and then `::: NAME: ok in N s`. Nothing is printed after a
# failure: under `set -e` the first failing command inside the step ends the script, so a step
# made of several commands fails on the first that does (an `if` around the step would hide that).
step() {
    local name=$1
    shift
    echo "::: $name"
    local start=$SECONDS
    "$@"
    echo "::: $name: ok in $((SECONDS - start)) s"
}

# Runs one check, printing its duration; a failure is recorded in the array `failed` (which the
# caller declares and reports at the end) and the next check still runs.
check() {
    local name=$1
    shift
    echo "::: $name"
    local start=$SECONDS
    if "$@"; then
        echo "::: $name: ok in $((SECONDS - start)) s"
    else
        echo "::: $name: FAILED in $((SECONDS - start)) s"
        failed+=("$name")
    fi
}

# Runs one part of a step or check, printing its duration whatever its outcome, and returns its
# status.
part() {
    local name=$1
    shift
    local start=$SECONDS status=0
    "$@" || status=$?
    echo "::: ... $name: $((SECONDS - start)) s"
    return "$status"
}

# Ends a whole tier that cannot run on this machine, saying why: `skipped: REASON`, exit 0.
skip() {
    echo "skipped: $1"
    exit 0
}
