"""The built-in evaluation text: plain English prose written for this project (about 500 tokens with
a 49k-entry BPE vocabulary), mixing narrative, explanation, numbers and a short dialogue so that
next-token figures are not dominated by one register."""

EVAL_TEXT = """\
The lighthouse on the northern cape was built in 1871, after three ships were lost on the rocks in a \
single winter. Its keeper lived alone for most of the year. Every evening he climbed the one hundred \
and twelve steps, cleaned the lens, trimmed the wick and wrote the weather in a thick leather book. \
When the fog rolled in from the sea, he rang the bell every thirty seconds until morning.

Most people imagine that the job was lonely, but the keeper's letters tell a different story. He wrote \
to his sister about the seals that slept on the lower rocks, the fishermen who waved as they passed, \
and the supply boat that arrived on the first Monday of each month with flour, oil, newspapers and, \
if he was lucky, a parcel of books.

A computer works in a similar way to a careful keeper. It follows a list of instructions, one after \
another, and it never gets tired of repeating the same task. The processor reads a number from memory, \
changes it, and writes the result back. Because memory is slower than the processor, modern chips keep \
small caches close to each core, so that the data they need next is usually already waiting.

"Can you explain why the bread did not rise?" asked the student.
"Usually the water was too hot," said the baker, "or the yeast was old. Try again tomorrow, and keep \
the dough somewhere warm, but not on top of the oven."

In the spring the town held a market in the square. Farmers sold eggs, cheese, honey and early \
vegetables, and children ran between the stalls with paper kites. By noon the sun was warm enough to \
sit outside, and the old men played chess under the trees while their coffee went cold.

To plant a small garden, choose a place that gets at least six hours of sunlight. Loosen the soil to \
the depth of a spade, mix in some compost, and water the seeds gently so that they are not washed \
away. Most vegetables need regular water, but too much can rot the roots, so let the top of the soil \
dry a little between waterings.

The train left the station at seven forty-five and crossed the river twenty minutes later. From the \
window, passengers could see the hills turning green, a line of white houses along the shore, and the \
tower of the old church rising above the roofs of the village.
"""
