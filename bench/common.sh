# Helpers shared by bench/ab.sh, bench/profile.sh and bench/callgrind.sh (sourced, not run).

# Prints the scheme subscribers connect with for the herald-bench arguments given: `ws`, or
# `http` when they name another `--transport`.
subscriber_scheme() {
    local scheme=ws previous=
    for argument in "$@"; do
        if [ "$previous" = --transport ] && [ "$argument" != ws ]; then
            scheme=http
        fi
        previous=$argument
    done
    echo "$scheme"
}
