# Liaison: one image for the broker, the agents and the CLI.
# Build:  docker build -t liaison:dev .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY testkit testkit
RUN cargo build --release --locked --bin liaison

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/liaison liaison \
 && mkdir -p /certs /data \
 && chown liaison:liaison /certs /data
COPY --from=build /src/target/release/liaison /usr/local/bin/liaison
COPY policy.example.toml liaison.example.toml agent.example.toml /etc/liaison/
USER liaison
WORKDIR /var/lib/liaison
ENTRYPOINT ["liaison"]
CMD ["--help"]
