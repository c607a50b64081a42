"""Remote functions for the test suites, written with the official StateFun Python SDK
(apache-flink-statefun, from PyPI) and served by aiohttp on 127.0.0.1.

Usage: python functions.py PORT

Routes:
  POST /statefun       every SDK function below
  POST /fault          the same functions, after the faults queued with /control
  POST /control        ?fault=500|garbage|ctype|slow&count=N queues N faults
  POST /raw/badstate   a hand-written endpoint whose state mutation has the wrong type
"""
import asyncio
import sys
from datetime import timedelta

from aiohttp import web
from statefun import (
    BoolType, Context, IntType, LongType, Message, RequestReplyHandler, StatefulFunctions,
    StringType, ValueSpec, egress_message_builder, kafka_egress_message, make_json_type,
    message_builder,
)
from statefun.request_reply_pb2 import FromFunction, ToFunction

functions = StatefulFunctions()
GREET_REQUEST = make_json_type(typename="example/GreetRequest")
PAIR = make_json_type(typename="py/Pair")


def greeting_for(name, visits):
    if visits == 1:
        return f"Hi {name}, first visit"
    return f"Hi {name}, visit number {visits}"


# The StateFun playground greeter: person counts, greeter greets through a Kafka egress.
@functions.bind(typename="example/person", specs=[ValueSpec(name="visits", type=IntType)])
async def person(context: Context, message: Message):
    request = message.as_type(GREET_REQUEST)
    visits = (context.storage.visits or 0) + 1
    context.storage.visits = visits
    request["visits"] = visits
    context.send(message_builder(target_typename="example/greeter", target_id=request["name"],
                                 value=request, value_type=GREET_REQUEST))


@functions.bind(typename="example/greeter")
async def greeter(context: Context, message: Message):
    request = message.as_type(GREET_REQUEST)
    name = request["name"]
    context.send_egress(kafka_egress_message(typename="example/greets", topic="greetings", key=name,
                                             value=greeting_for(name, request["visits"])))


# Expiring state declared from Python.
@functions.bind(typename="py/expiring", specs=[
    ValueSpec(name="written", type=IntType, expire_after_write=timedelta(seconds=2)),
    ValueSpec(name="called", type=IntType, expire_after_call=timedelta(seconds=2)),
])
async def expiring(context: Context, message: Message):
    if message.as_string() == "set":
        context.storage.written = 1
        context.storage.called = 1


# Python -> Rust -> Python: forwards a value to the Rust echo (rs/echo), which sends it
# back; the returning value is recorded per type in state.
@functions.bind(typename="py/pingpong", specs=[
    ValueSpec(name="int", type=IntType), ValueSpec(name="long", type=LongType),
    ValueSpec(name="string", type=StringType), ValueSpec(name="bool", type=BoolType),
    ValueSpec(name="pair", type=PAIR), ValueSpec(name="returns", type=IntType),
])
async def pingpong(context: Context, message: Message):
    if context.caller is None:
        kind, raw = message.as_string().split(":", 1)
        value, value_type = {
            "int": lambda: (int(raw or 0), IntType), "long": lambda: (int(raw or 0), LongType),
            "string": lambda: (raw, StringType), "bool": lambda: (raw == "true", BoolType),
            "pair": lambda: ({"a": raw, "n": 0}, PAIR),
        }[kind]()
        context.send(message_builder(target_typename="rs/echo", target_id=context.address.id,
                                     value=value, value_type=value_type))
        return
    context.storage.returns = (context.storage.returns or 0) + 1
    if message.is_int():
        context.storage.int = message.as_int()
    elif message.is_long():
        context.storage.long = message.as_long()
    elif message.is_string():
        context.storage.string = message.as_string()
    elif message.is_bool():
        context.storage.bool = message.as_bool()
    else:
        context.storage.pair = message.as_type(PAIR)


# send_after / cancel_delayed_message and egress from Python.
@functions.bind(typename="py/timer")
async def timer(context: Context, message: Message):
    command = message.as_string()
    if command.startswith("later:"):
        _, token = command.split(":", 1)
        context.send_after(timedelta(seconds=1),
                           message_builder(target_typename="example/counter", target_id=context.address.id,
                                           value=1, value_type=LongType),
                           cancellation_token=token)
    elif command.startswith("cancel:"):
        context.cancel_delayed_message(command.split(":", 1)[1])
    elif command == "egress":
        context.send_egress(egress_message_builder(target_typename="py/out", value="from python",
                                                   value_type=StringType))


# A counter behind the fault-injecting route.
@functions.bind(typename="faulty/counter", specs=[ValueSpec(name="count", type=LongType)])
async def faulty_counter(context: Context, message: Message):
    context.storage.count = (context.storage.count or 0) + message.as_long()


handler = RequestReplyHandler(functions)
faults = []


async def statefun(request):
    body = await handler.handle_async(await request.read())
    return web.Response(body=body, content_type="application/octet-stream")


async def fault(request):
    if faults:
        kind = faults.pop(0)
        if kind == "500":
            return web.Response(status=500, text="injected")
        if kind == "garbage":
            return web.Response(body=b"\xff\x00garbage", content_type="application/octet-stream")
        if kind == "ctype":
            return web.Response(text="not protobuf", content_type="text/plain")
        if kind == "slow":
            await asyncio.sleep(3)
    return await statefun(request)


async def control(request):
    faults.extend([request.query["fault"]] * int(request.query.get("count", "1")))
    return web.Response(text=str(len(faults)))


async def badstate(request):
    to_function = ToFunction()
    to_function.ParseFromString(await request.read())
    response = FromFunction()
    if not to_function.invocation.state:
        spec = response.incomplete_invocation_context.missing_values.add()
        spec.state_name = "n"
        spec.type_typename = "io.statefun.types/int"
    else:
        mutation = response.invocation_result.state_mutations.add()
        mutation.mutation_type = FromFunction.PersistedValueMutation.MODIFY
        mutation.state_name = "n"
        mutation.state_value.typename = "io.statefun.types/string"
        mutation.state_value.has_value = True
        mutation.state_value.value = b"\n\x03bad"
    return web.Response(body=response.SerializeToString(), content_type="application/octet-stream")


app = web.Application()
app.add_routes([web.post("/statefun", statefun), web.post("/fault", fault),
                web.post("/control", control), web.post("/raw/badstate", badstate)])

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda *_: print("ready", flush=True))
