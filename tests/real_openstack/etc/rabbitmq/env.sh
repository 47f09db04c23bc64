# Sourced before starting RabbitMQ or calling rabbitmqctl: everything under the scratch folder,
# everything on 127.0.0.1.
export HOME=@SCRATCH@/rabbitmq
export RABBITMQ_NODENAME=rabbit@localhost
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=5672
export RABBITMQ_DIST_PORT=25672
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_CONFIG_FILE=@SCRATCH@/etc/rabbitmq/rabbitmq.conf
export RABBITMQ_ENABLED_PLUGINS_FILE=@SCRATCH@/etc/rabbitmq/enabled_plugins
export RABBITMQ_MNESIA_BASE=@SCRATCH@/rabbitmq/mnesia
export RABBITMQ_LOG_BASE=@SCRATCH@/log/rabbitmq
export RABBITMQ_PID_FILE=@SCRATCH@/run/rabbitmq-server.pid
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
