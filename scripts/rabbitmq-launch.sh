#!/usr/bin/env bash
# Starts one RabbitMQ server detached, configured by the RABBITMQ_* variables the caller
# exported (scripts/rabbitmq.sh, scripts/rabbitmq-cluster.sh), with as many open files as
# the hard limit allows.
#
# Debian's wrapper, run as root, starts the server as the rabbitmq user through su, whose
# login limits leave it 1024 open files. RabbitMQ keeps a share of its handles for queues
# and takes one for each new connection; once a few hundred quorum queues hold theirs, a
# new connection waits for a handle before its handshake, forever (seen on 3.10.8: about
# 500 quorum queues, then no AMQP handshake completes and rabbitmqctl hangs). So this
# starts it the way the wrapper does, with the limit raised first.
set -u

if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1 && [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    cd /var/lib/rabbitmq 2>/dev/null || true
    su rabbitmq -s /bin/sh -c 'ulimit -n "$(ulimit -Hn)"; exec /usr/lib/rabbitmq/bin/rabbitmq-server -detached' >/dev/null 2>&1 || true
else
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    rabbitmq-server -detached >/dev/null 2>&1 || true
fi
