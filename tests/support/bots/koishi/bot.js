// A real Koishi bot (adapter-onebot in reverse-WS server mode) for MomoBridge's end-to-end tests.
//
// Run: node bot.js PORT ACCESS_TOKEN [SELF_ID]
// Listens on ws://127.0.0.1:PORT/onebot for the bridge (which plays QQ account SELF_ID, default
// 10000) and answers every message with "koishi: <text>".
//
// Koishi's ws-reverse server checks X-Client-Role and X-Self-ID but not the access token
// (adapter-onebot 6.9.4 uses `token` only when Koishi itself dials out). A deployment puts the
// check in front of it; this bot does the same in the WebSocket server's own verifyClient hook,
// so a wrong or missing `Authorization: Bearer <token>` is refused with HTTP 401 at the handshake.
'use strict'

const { Context } = require('koishi')
const { HTTP } = require('@koishijs/plugin-http')
const { Server } = require('@koishijs/plugin-server')
const { OneBotBot } = require('koishi-plugin-adapter-onebot')

const port = Number(process.argv[2])
const token = process.argv[3] || ''
const selfId = process.argv[4] || '10000'

const app = new Context()
// What the `koishi` CLI's loader would add: the HTTP client (the bot class needs it) and the server.
app.plugin(HTTP)
app.plugin(Server, { host: '127.0.0.1', port, maxPort: port })

if (token) {
  app.server._ws.options.verifyClient = ({ req }, done) => {
    const given = req.headers.authorization || ''
    const query = new URL(req.url, 'http://x').searchParams.get('access_token')
    if (given === `Bearer ${token}` || query === token) return done(true)
    done(false, 401, 'Unauthorized')
  }
}

app.plugin(OneBotBot, { selfId, protocol: 'ws-reverse', path: '/onebot' })

// An echo bot: the incoming message's content (Koishi elements) goes straight back.
app.middleware((session) => `koishi: ${session.content}`)

app.start()

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, async () => {
    await app.stop()
    process.exit(0)
  })
}
