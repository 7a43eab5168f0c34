#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft) on 127.0.0.1 for development and
# tests. The broker's jars come from Maven Central (no tarball download) into
# a cache outside the clone; data and logs live beside them.
#
#   scripts/kafka.sh start     fetch the jars if needed, format, start, wait until ready
#   scripts/kafka.sh stop      stop the broker (SIGTERM, then SIGKILL after 30 s)
#   scripts/kafka.sh status    exit 0 if the broker answers
#   scripts/kafka.sh reset     stop and delete the broker's data
#   scripts/kafka.sh topics ARGS      Kafka's kafka-topics tool (e.g. --create --topic t --partitions 3)
#   scripts/kafka.sh produce TOPIC    lines on stdin become messages (key:value with --keyed)
#   scripts/kafka.sh consume TOPIC    print a topic's messages from the beginning (read_committed)
#
# Environment: KAFKA_VERSION (4.1.1), KAFKA_PORT (9092), EDDY_KAFKA_HOME
# (~/.cache/eddy/kafka-$KAFKA_VERSION).
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
HOME_DIR="${EDDY_KAFKA_HOME:-$HOME/.cache/eddy/kafka-$KAFKA_VERSION}"
LIBS="$HOME_DIR/libs"
DATA="$HOME_DIR/data-$KAFKA_PORT"
LOG="$HOME_DIR/broker-$KAFKA_PORT.log"
PIDFILE="$HOME_DIR/broker-$KAFKA_PORT.pid"
CONFIG="$HOME_DIR/server-$KAFKA_PORT.properties"

fetch() {
    [ -f "$LIBS/.complete" ] && return 0
    mkdir -p "$HOME_DIR"
    local pom="$HOME_DIR/pom.xml"
    cat >"$pom" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.eddy</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.17</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
EOF
    echo "kafka.sh: fetching Apache Kafka $KAFKA_VERSION jars with Maven into $LIBS" >&2
    rm -rf "$LIBS"
    mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$LIBS" -DincludeScope=runtime >&2
    touch "$LIBS/.complete"
}

write_config() {
    cat >"$CONFIG" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
min.insync.replicas=1
default.replication.factor=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
EOF
    cat >"$HOME_DIR/log4j2.yaml" <<EOF
Configuration:
  Appenders:
    File:
      name: file
      fileName: "$LOG"
      append: true
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: file
    Logger:
      - name: kafka.log
        level: WARN
      - name: org.apache.kafka.storage
        level: WARN
EOF
}

java_cmd() {
    java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$HOME_DIR/log4j2.yaml" \
        -cp "$LIBS/*" "$@"
}

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

answers() {
    # The broker's port accepts connections (bash's /dev/tcp: no extra tools).
    (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null
}

start() {
    if running && answers; then
        echo "kafka.sh: broker already running on 127.0.0.1:$KAFKA_PORT (pid $(cat "$PIDFILE"))"
        return 0
    fi
    fetch
    write_config
    if [ ! -f "$DATA/meta.properties" ]; then
        mkdir -p "$DATA"
        java_cmd kafka.tools.StorageTool format --standalone -t "eddy-dev-cluster-000001" -c "$CONFIG" >>"$LOG" 2>&1 \
            || java_cmd kafka.tools.StorageTool format -t "eddy-dev-cluster-000001" -c "$CONFIG" >>"$LOG" 2>&1 \
            || { echo "kafka.sh: formatting storage failed; see $LOG" >&2; exit 1; }
    fi
    nohup bash -c "$(declare -f java_cmd); HOME_DIR='$HOME_DIR' LIBS='$LIBS' LOG='$LOG'; java_cmd kafka.Kafka '$CONFIG'" >>"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 120); do
        if answers && grep -q "Kafka Server started\|\[KafkaRaftServer nodeId=1\] Kafka Server started" "$LOG"; then
            echo "kafka.sh: broker ready on 127.0.0.1:$KAFKA_PORT (log: $LOG)"
            return 0
        fi
        if ! running; then
            echo "kafka.sh: broker exited; last lines of $LOG:" >&2
            tail -20 "$LOG" >&2
            exit 1
        fi
        sleep 1
    done
    echo "kafka.sh: broker did not become ready in 120 s; see $LOG" >&2
    exit 1
}

stop() {
    if ! running; then
        rm -f "$PIDFILE"
        echo "kafka.sh: broker not running"
        return 0
    fi
    local pid
    pid=$(cat "$PIDFILE")
    # The java process is a child of the nohup'd bash.
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
        running || break
        sleep 1
    done
    if running; then
        pkill -KILL -P "$pid" 2>/dev/null || true
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
    echo "kafka.sh: broker stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status)
        if running && answers; then echo "kafka.sh: running on 127.0.0.1:$KAFKA_PORT"; else echo "kafka.sh: not running"; exit 1; fi ;;
    reset) stop; rm -rf "$DATA"; echo "kafka.sh: data removed" ;;
    fetch) fetch ;;
    topics) shift; fetch; java_cmd org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" "$@" ;;
    produce)
        shift; fetch; topic="$1"; shift
        extra=()
        if [ "${1:-}" = "--keyed" ]; then extra=(--property parse.key=true --property key.separator=:); shift; fi
        java_cmd org.apache.kafka.tools.ConsoleProducer --bootstrap-server "127.0.0.1:$KAFKA_PORT" --topic "$topic" "${extra[@]}" "$@" ;;
    consume)
        shift; fetch; topic="$1"; shift
        java_cmd org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "127.0.0.1:$KAFKA_PORT" --topic "$topic" \
            --from-beginning --isolation-level read_committed --timeout-ms 5000 --property print.key=true "$@" ;;
    *) echo "usage: $0 start|stop|status|reset|fetch|topics|produce|consume" >&2; exit 2 ;;
esac
