# orders_backend.py
#
# The seed's orders backend, as the article "Событийно-ориентированные приложения с
# использованием Kafka и Python" ("Event-driven applications with Kafka and Python", a
# translation published on Habr) has it.
# The only change: the broker address (KAFKA_SERVER_ADDRESS) and the HTTP port
# (SEED_ORDERS_PORT) come from the environment, so that scripts/bench.sh can point it at its
# own broker and run it beside flatpack. Everything else is the seed's code, unchanged.

import json
import os
import time

from kafka import KafkaProducer
from flask import Flask, jsonify, request

ORDER_KAFKA_TOPIC = 'order_details'
# KAFKA_SERVER_ADDRESS = 'localhost:9092'
KAFKA_SERVER_ADDRESS = os.environ.get('KAFKA_SERVER_ADDRESS', 'broker:29092')
# KAFKA_SERVER_ADDRESS = '47.93.191.241:29093`

app = Flask(__name__)

## from inside docker compose network - when add the service to compose file -> orders_backend:v1
producer = KafkaProducer(bootstrap_servers=[KAFKA_SERVER_ADDRESS], security_protocol="PLAINTEXT",
                              value_serializer=lambda x: json.dumps(x).encode('utf-8'))

# post endpoint to get user id , order id, user email, and order details
@app.route('/order', methods=['POST'])
def order():
    user_id = request.json['user_id']
    order_id = request.json['order_id']
    user_email = request.json['user_email']
    order_details = request.json['order_details']
    order = {}
    order['user_id'] = user_id
    order['order_id'] = order_id
    order['user_email'] = user_email
    order['order_details'] = order_details
    order['time'] = time.time()
    producer.send(ORDER_KAFKA_TOPIC, order)
    print("Sent order details {} to kafka topic: {}".format(order, ORDER_KAFKA_TOPIC))
    return jsonify(order)


if __name__ == '__main__':
    app.run(host="0.0.0.0", port=int(os.environ.get('SEED_ORDERS_PORT', '5002')), debug=True)
