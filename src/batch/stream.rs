//! Continuous batching's handle and per-request streams: [`StreamBatcher`], [`ChunkStream`] and
//! what a stream yields, [`Streamed`]; and the stream slot between the worker (one writer) and a
//! request's stream (one reader).
//!
//! The slot is a [`Mailbox`] (see `slot.rs`) holding the chunks not yet read and the final item,
//! like the whole-request reply slot: the worker locks it once per chunk, uncontended but for the
//! moment the reader takes a chunk, and user code never runs under the lock (a chunk refused
//! because the stream was dropped is dropped after the lock is released, a panic in its `Drop`
//! caught).

use super::slot::{Mailbox, Reply};
use super::step::StepHandler;
use super::{BatchError, BatchHistograms, BatchStats, Owner, SubmitError};
#[cfg(doc)]
use super::{BatcherBuilder, JoinPolicy};
use crate::sync::Arc;
use core::fmt;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::collections::VecDeque;
use std::time::Instant;

/// One item of a [`ChunkStream`]: a partial result, or the final item.
///
/// # Examples
///
/// ```
/// use latchless::batch::{BatchError, Streamed};
///
/// let items: Vec<Streamed<char, String>> = vec![Streamed::Chunk('h'), Streamed::Done(Ok("h".into()))];
/// assert!(items.last().unwrap().is_done());
/// assert!(Streamed::<char, String>::Done(Err(BatchError::Expired)).is_done());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Streamed<Chunk, Out> {
    /// A partial result; more items follow.
    Chunk(Chunk),
    /// The final item, exactly one per accepted request: its output, or why it failed.
    Done(Result<Out, BatchError>),
}

impl<Chunk, Out> Streamed<Chunk, Out> {
    /// Whether this is the final item.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::Streamed;
    ///
    /// assert!(!Streamed::<u8, u8>::Chunk(1).is_done());
    /// ```
    pub fn is_done(&self) -> bool {
        matches!(self, Self::Done(_))
    }
}

/// What a stream slot holds.
struct State<C, O> {
    /// Chunks sent and not yet read, oldest first.
    chunks: VecDeque<C>,
    /// The final item, until the reader takes it (after every chunk).
    done: Option<Result<O, BatchError>>,
    /// The reader wants the final item only ([`ChunkStream::skip_chunks`]): chunks are dropped
    /// as they come, and wake nobody.
    skip_chunks: bool,
}

/// One streaming request's slot: its state in a [`Mailbox`], whose cancellation flag says the
/// stream was dropped before its final item (nobody reads, the item leaves the batch).
pub(super) struct StreamSlot<C, O> {
    mailbox: Mailbox<State<C, O>>,
}

impl<C, O> StreamSlot<C, O> {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            mailbox: Mailbox::new(State {
                chunks: VecDeque::new(),
                done: None,
                skip_chunks: false,
            }),
        })
    }

    /// Streams a chunk (dropped, a panic in its `Drop` caught, if the stream was, or skips its
    /// chunks: the reader is then not woken).
    pub(super) fn push(&self, chunk: C) {
        self.mailbox.send(chunk, |state, chunk| {
            if state.skip_chunks {
                return Err(chunk);
            }
            state.chunks.push_back(chunk);
            Ok(())
        });
    }

    /// Sends the final item (dropped, a panic in its `Drop` caught, if the stream was).
    pub(super) fn finish(&self, result: Result<O, BatchError>) {
        self.mailbox.send(result, |state, result| {
            debug_assert!(state.done.is_none(), "one final item per request");
            state.done = Some(result);
            Ok(())
        });
    }
}

impl<C, O> Reply for StreamSlot<C, O> {
    fn is_cancelled(&self) -> bool {
        // A hint that spares the worker a dropped stream's steps; one it misses costs a step
        // only, since `send` checks again under the lock.
        self.mailbox.is_cancelled()
    }

    fn fail(&self, err: BatchError) {
        self.finish(Err(err));
    }
}

/// One request's results as they are made: a blocking [`Iterator`] and a
/// [`futures_core::Stream`] (usable from any async runtime or none) of [`Streamed`] items, every
/// [`Chunk`](Streamed::Chunk) in order, then exactly one [`Done`](Streamed::Done), then nothing.
///
/// Dropping it before the final item cancels the request: it leaves the batch at the next step
/// (or is skipped, if it has not joined yet). Chunks not yet read wait in the stream, unbounded:
/// a reader that falls behind holds at most one item's chunks. A reader that wants the final item
/// alone calls [`skip_chunks`](Self::skip_chunks): no chunk is kept for it, and it is woken once.
///
/// # Examples
///
/// ```
/// use latchless::batch::{Batcher, Joined, Step, StepHandler, Streamed};
///
/// /// Spells a word, one letter per step.
/// struct Spell;
/// impl StepHandler for Spell {
///     type Req = String;
///     type State = (Vec<char>, usize);
///     type Chunk = char;
///     type Out = usize;
///     fn join(&mut self, words: Vec<String>) -> Vec<Joined<Self::State, usize>> {
///         words.into_iter().map(|w| Joined::Running((w.chars().collect(), 0))).collect()
///     }
///     fn step(&mut self, items: &mut [Self::State]) -> Vec<Step<char, usize>> {
///         items
///             .iter_mut()
///             .map(|(w, i)| match w.get(*i) {
///                 Some(&c) => { *i += 1; Step::Chunk(c) }
///                 None => Step::Finish(w.len()),
///             })
///             .collect()
///     }
/// }
///
/// let b = Batcher::builder().spawn_steps(Spell).unwrap();
/// let mut letters = String::new();
/// for item in b.submit("hey".to_string()).unwrap() {
///     match item {
///         Streamed::Chunk(c) => letters.push(c),
///         Streamed::Done(len) => assert_eq!(len, Ok(3)),
///     }
/// }
/// assert_eq!(letters, "hey");
/// ```
#[must_use = "dropping a ChunkStream cancels its request"]
pub struct ChunkStream<Chunk, Out> {
    slot: Arc<StreamSlot<Chunk, Out>>,
    /// The final item was taken: the stream is over, dropping it cancels nothing.
    ended: bool,
}

impl<Chunk, Out> ChunkStream<Chunk, Out> {
    /// The next item if one is there, without blocking: `None` if none has arrived yet or the
    /// stream has ended (tell the two apart with [`is_ended`](Self::is_ended)).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{Batcher, Joined, Step, StepHandler};
    ///
    /// struct Echo;
    /// impl StepHandler for Echo {
    ///     type Req = u8;
    ///     type State = ();
    ///     type Chunk = ();
    ///     type Out = u8;
    ///     fn join(&mut self, xs: Vec<u8>) -> Vec<Joined<(), u8>> {
    ///         xs.into_iter().map(Joined::Finished).collect()
    ///     }
    ///     fn step(&mut self, _: &mut [()]) -> Vec<Step<(), u8>> { Vec::new() }
    /// }
    ///
    /// let b = Batcher::builder().spawn_steps(Echo).unwrap();
    /// let mut s = b.submit(5).unwrap();
    /// b.shutdown(); // every accepted item has its final item now
    /// assert!(s.try_next().is_some());
    /// assert!(s.is_ended() && s.try_next().is_none());
    /// ```
    pub fn try_next(&mut self) -> Option<Streamed<Chunk, Out>> {
        if self.ended {
            return None;
        }
        let item = Self::take(&mut self.slot.mailbox.lock().data);
        self.note(item)
    }

    /// Whether the final item has been read.
    ///
    /// # Examples
    ///
    /// ```
    /// # use latchless::batch::{Batcher, Joined, Step, StepHandler};
    /// # struct Done;
    /// # impl StepHandler for Done {
    /// #     type Req = u8;
    /// #     type State = ();
    /// #     type Chunk = ();
    /// #     type Out = u8;
    /// #     fn join(&mut self, xs: Vec<u8>) -> Vec<Joined<(), u8>> {
    /// #         xs.into_iter().map(Joined::Finished).collect()
    /// #     }
    /// #     fn step(&mut self, _: &mut [()]) -> Vec<Step<(), u8>> { Vec::new() }
    /// # }
    /// let b = Batcher::builder().spawn_steps(Done).unwrap();
    /// let mut s = b.submit(1).unwrap();
    /// assert!(!s.is_ended());
    /// assert!(s.next().is_some_and(|item| item.is_done()));
    /// assert!(s.is_ended());
    /// ```
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Asks for the final item only: the chunks not yet read are dropped now (on this thread),
    /// later ones are dropped as the worker makes them, and the worker no longer wakes this
    /// reader for them, only for the final item. The stream then yields its
    /// [`Done`](Streamed::Done) and nothing else. The request still runs step by step with its
    /// batch; a client that wants a whole reply (a non-streaming API, say) is spared a wake-up
    /// per chunk. Nothing changes for a stream that has ended; calling it again does nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{Batcher, Joined, Step, StepHandler, Streamed};
    ///
    /// /// Counts down from `n`, a chunk per step, then answers `n`.
    /// struct Countdown;
    /// impl StepHandler for Countdown {
    ///     type Req = u32;
    ///     type State = (u32, u32);
    ///     type Chunk = u32;
    ///     type Out = u32;
    ///     fn join(&mut self, ns: Vec<u32>) -> Vec<Joined<(u32, u32), u32>> {
    ///         ns.into_iter().map(|n| Joined::Running((n, n))).collect()
    ///     }
    ///     fn step(&mut self, items: &mut [(u32, u32)]) -> Vec<Step<u32, u32>> {
    ///         items
    ///             .iter_mut()
    ///             .map(|(left, n)| match *left {
    ///                 0 => Step::Finish(*n),
    ///                 _ => { *left -= 1; Step::Chunk(*left) }
    ///             })
    ///             .collect()
    ///     }
    /// }
    ///
    /// let b = Batcher::builder().spawn_steps(Countdown).unwrap();
    /// let mut stream = b.submit(1000).unwrap();
    /// stream.skip_chunks();
    /// assert_eq!(stream.next(), Some(Streamed::Done(Ok(1000))));
    /// assert_eq!(stream.next(), None);
    /// ```
    pub fn skip_chunks(&mut self) {
        if self.ended {
            return;
        }
        let unread = {
            let mut state = self.slot.mailbox.lock();
            state.data.skip_chunks = true;
            core::mem::take(&mut state.data.chunks)
        };
        // Dropped outside the lock, as in `Drop`.
        drop(unread);
    }

    /// The next item in the state, chunks first.
    fn take(state: &mut State<Chunk, Out>) -> Option<Streamed<Chunk, Out>> {
        match state.chunks.pop_front() {
            Some(c) => Some(Streamed::Chunk(c)),
            None => state.done.take().map(Streamed::Done),
        }
    }

    fn note(&mut self, item: Option<Streamed<Chunk, Out>>) -> Option<Streamed<Chunk, Out>> {
        if item.as_ref().is_some_and(Streamed::is_done) {
            self.ended = true;
        }
        item
    }
}

impl<Chunk, Out> Iterator for ChunkStream<Chunk, Out> {
    type Item = Streamed<Chunk, Out>;

    /// Blocks until the next item; `None` after the final one.
    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        let mailbox = &self.slot.mailbox;
        let item = {
            let mut state = mailbox.lock();
            loop {
                if let Some(item) = Self::take(&mut state.data) {
                    break item;
                }
                state = mailbox.sleep(state);
            }
        };
        self.note(Some(item))
    }
}

impl<Chunk, Out> futures_core::Stream for ChunkStream<Chunk, Out> {
    type Item = Streamed<Chunk, Out>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Streamed<Chunk, Out>>> {
        // `ChunkStream` is `Unpin` (an `Arc` and a flag).
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let item = this.slot.mailbox.poll_take(cx, Self::take);
        match this.note(item) {
            Some(item) => Poll::Ready(Some(item)),
            None => Poll::Pending,
        }
    }
}

impl<Chunk, Out> futures_core::FusedStream for ChunkStream<Chunk, Out> {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

impl<Chunk, Out> Drop for ChunkStream<Chunk, Out> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let mailbox = &self.slot.mailbox;
        let unread = {
            let mut state = mailbox.lock();
            if state.data.done.is_none() {
                mailbox.cancel(&mut state);
            }
            (
                core::mem::take(&mut state.data.chunks),
                state.data.done.take(),
                Mailbox::take_waker(&mut state),
            )
        };
        // The items nobody will read, dropped outside the lock.
        drop(unread);
    }
}

impl<Chunk, Out> fmt::Debug for ChunkStream<Chunk, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkStream")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// A continuous batcher: a cheap, cloneable handle (`Send + Sync` when requests, chunks and
/// outputs are `Send`) to a worker thread (or a pool of them) that runs a [`StepHandler`] on a
/// batch that new requests join and finished ones leave between steps, streaming each request's
/// results through its [`ChunkStream`]. Start one with [`BatcherBuilder::spawn_steps`], or a pool
/// with [`BatcherBuilder::spawn_steps_pool`].
///
/// The builder's settings mean, here: `max_batch_size` the most items running at once;
/// `max_batch_cost` the most total [`cost`](BatcherBuilder::cost) of the items running at once
/// (their token budget: the KV cache they may fill), a request costlier alone refused
/// [`TooCostly`](SubmitError::TooCostly); `max_queue` the most items waiting or running; priority
/// classes and their timeouts as for the [`Batcher`](super::Batcher); `max_wait` is not used (an
/// item never waits for companions: it joins at the next step boundary the
/// [`JoinPolicy`] allows).
///
/// Every accepted request's stream ends with exactly one final item: its output; or
/// [`BatchError::Expired`] if its deadline passed, in the queue or while it generated (its
/// stream then holds the chunks made until then); [`BatchError::HandlerPanicked`] or
/// [`BatchError::BadHandlerOutput`] if its join or a step it took part in failed. Dropping the
/// stream cancels the request. [`shutdown`](Self::shutdown) stops admission and returns once
/// every accepted item has finished (ran to completion or to its deadline); dropping the last
/// handle does the same.
///
/// | method | progress |
/// |---|---|
/// | [`submit`](Self::submit), [`submit_before`](Self::submit_before), [`submit_to`](Self::submit_to) | lock-free: never blocks; refusals return at once |
/// | [`ChunkStream::next`](Iterator::next) | blocks until the next item |
/// | [`shutdown`](Self::shutdown) | blocks until every accepted item has finished |
///
/// # Examples
///
/// ```
/// use latchless::batch::{Batcher, Joined, Step, StepHandler, Streamed};
/// use std::thread;
///
/// /// Emits `n` chunks, then the sum of their indices.
/// struct Ramp;
/// impl StepHandler for Ramp {
///     type Req = u32;
///     type State = (u32, u32);
///     type Chunk = u32;
///     type Out = u32;
///     fn join(&mut self, ns: Vec<u32>) -> Vec<Joined<(u32, u32), u32>> {
///         ns.into_iter().map(|n| Joined::Running((0, n))).collect()
///     }
///     fn step(&mut self, items: &mut [(u32, u32)]) -> Vec<Step<u32, u32>> {
///         items
///             .iter_mut()
///             .map(|(i, n)| if *i == *n { Step::Finish(*n * (*n - 1) / 2) } else { *i += 1; Step::Chunk(*i - 1) })
///             .collect()
///     }
/// }
///
/// let b = Batcher::builder().max_batch_size(4).spawn_steps(Ramp).unwrap();
/// thread::scope(|s| {
///     for n in 1..=6 {
///         let b = b.clone();
///         s.spawn(move || {
///             let items: Vec<_> = b.submit(n).unwrap().collect();
///             assert_eq!(items.len() as u32, n + 1);
///             assert_eq!(items.last(), Some(&Streamed::Done(Ok(n * (n - 1) / 2))));
///         });
///     }
/// });
/// b.shutdown();
/// assert_eq!(b.stats().completed, 6);
/// ```
pub struct StreamBatcher<Req, Chunk, Out> {
    owner: Arc<Owner<Req, StreamSlot<Chunk, Out>>>,
}

impl<Req, Chunk, Out> Clone for StreamBatcher<Req, Chunk, Out> {
    fn clone(&self) -> Self {
        Self {
            owner: Arc::clone(&self.owner),
        }
    }
}

impl<Req, Chunk, Out> fmt::Debug for StreamBatcher<Req, Chunk, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.owner.inner;
        f.debug_struct("StreamBatcher")
            .field("config", &inner.config)
            .field("join", &inner.join)
            .field("workers", &inner.sleepers.len())
            .field("classes", &inner.classes.len())
            .field("in_flight", &inner.in_flight.get())
            .finish_non_exhaustive()
    }
}

impl<Req: Send + 'static, Chunk: Send + 'static, Out: Send + 'static>
    StreamBatcher<Req, Chunk, Out>
{
    /// Starts one step-wise worker per maker. A worker calls its maker on its own thread for its
    /// handler, and again after a panic when `renew` is set.
    pub(super) fn start<H, M>(
        settings: super::config::Settings<Req>,
        renew: bool,
        makers: Vec<M>,
    ) -> Result<Self, super::SpawnError>
    where
        H: StepHandler<Req = Req, Chunk = Chunk, Out = Out> + 'static,
        M: FnMut() -> Option<H> + Send + 'static,
    {
        let bodies = makers
            .into_iter()
            .map(|make| {
                move |inner: Arc<super::Inner<Req, StreamSlot<Chunk, Out>>>, me: usize| {
                    inner.run_steps(me, make, renew);
                }
            })
            .collect();
        Ok(Self {
            owner: Arc::new(Owner::launch(settings, bodies)?),
        })
    }
}

impl<Req, Chunk, Out> StreamBatcher<Req, Chunk, Out> {
    /// Submits a request; its results stream through the returned [`ChunkStream`]. Never
    /// blocks.
    ///
    /// # Errors
    ///
    /// The request handed back inside a [`SubmitError`]: `TooCostly` if it costs more than
    /// `max_batch_cost`, `Overloaded` if `max_queue` items are waiting or running,
    /// `ShuttingDown` once shutdown began.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{Batcher, Joined, Step, StepHandler, Streamed, SubmitError};
    ///
    /// struct Done;
    /// impl StepHandler for Done {
    ///     type Req = u8;
    ///     type State = ();
    ///     type Chunk = ();
    ///     type Out = u8;
    ///     fn join(&mut self, xs: Vec<u8>) -> Vec<Joined<(), u8>> {
    ///         xs.into_iter().map(Joined::Finished).collect()
    ///     }
    ///     fn step(&mut self, _: &mut [()]) -> Vec<Step<(), u8>> { Vec::new() }
    /// }
    ///
    /// let b = Batcher::builder().spawn_steps(Done).unwrap();
    /// assert_eq!(b.submit(1).unwrap().last(), Some(Streamed::Done(Ok(1))));
    /// b.shutdown();
    /// assert!(matches!(b.submit(2), Err(SubmitError::ShuttingDown(2))));
    /// ```
    pub fn submit(&self, req: Req) -> Result<ChunkStream<Chunk, Out>, SubmitError<Req>> {
        self.submit_inner(req, self.owner.inner.default_class(), None)
    }

    /// Submits a request that must finish before `deadline`: otherwise its final item is
    /// [`BatchError::Expired`], whether the deadline passed while it waited (it never joins; the
    /// worker notices when it reaches the item in the queue, at the latest once the item would
    /// have joined) or while it generated (it leaves the batch before the next step, its stream
    /// holding the chunks made until then). Never blocks.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{BatchError, Batcher, Joined, Step, StepHandler, Streamed};
    /// use std::time::Instant;
    ///
    /// struct Forever;
    /// impl StepHandler for Forever {
    ///     type Req = ();
    ///     type State = ();
    ///     type Chunk = ();
    ///     type Out = ();
    ///     fn join(&mut self, xs: Vec<()>) -> Vec<Joined<(), ()>> {
    ///         xs.into_iter().map(Joined::Running).collect()
    ///     }
    ///     fn step(&mut self, items: &mut [()]) -> Vec<Step<(), ()>> {
    ///         items.iter().map(|_| Step::Continue).collect()
    ///     }
    /// }
    ///
    /// let b = Batcher::builder().spawn_steps(Forever).unwrap();
    /// let s = b.submit_before((), Instant::now()).unwrap();
    /// assert_eq!(s.last(), Some(Streamed::Done(Err(BatchError::Expired))));
    /// ```
    pub fn submit_before(
        &self,
        req: Req,
        deadline: Instant,
    ) -> Result<ChunkStream<Chunk, Out>, SubmitError<Req>> {
        self.submit_inner(req, self.owner.inner.default_class(), Some(deadline))
    }

    /// Submits a request to priority class `class` (0 the most urgent; see
    /// [`BatcherBuilder::class`]), with an optional deadline (without one, the class's default
    /// timeout applies, if any). Never blocks. The most urgent class's waiting items join
    /// first, with aging as for the [`Batcher`](super::Batcher).
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit), and [`SubmitError::NoSuchClass`] if there is no class
    /// `class`; `Overloaded` also when the class is at its own bound.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{Batcher, Joined, PriorityClass, Step, StepHandler, SubmitError};
    ///
    /// struct Done;
    /// impl StepHandler for Done {
    ///     type Req = u8;
    ///     type State = ();
    ///     type Chunk = ();
    ///     type Out = u8;
    ///     fn join(&mut self, xs: Vec<u8>) -> Vec<Joined<(), u8>> {
    ///         xs.into_iter().map(Joined::Finished).collect()
    ///     }
    ///     fn step(&mut self, _: &mut [()]) -> Vec<Step<(), u8>> { Vec::new() }
    /// }
    ///
    /// let b = Batcher::builder()
    ///     .class(PriorityClass::new())
    ///     .class(PriorityClass::new())
    ///     .spawn_steps(Done)
    ///     .unwrap();
    /// assert_eq!(b.submit_to(1, 0, None).unwrap().count(), 1);
    /// assert!(matches!(b.submit_to(2, 7, None), Err(SubmitError::NoSuchClass(2))));
    /// ```
    pub fn submit_to(
        &self,
        req: Req,
        class: usize,
        deadline: Option<Instant>,
    ) -> Result<ChunkStream<Chunk, Out>, SubmitError<Req>> {
        self.submit_inner(req, class, deadline)
    }

    fn submit_inner(
        &self,
        req: Req,
        class: usize,
        deadline: Option<Instant>,
    ) -> Result<ChunkStream<Chunk, Out>, SubmitError<Req>> {
        let slot = StreamSlot::new();
        self.owner
            .inner
            .enqueue(req, class, deadline, Arc::clone(&slot))?;
        Ok(ChunkStream { slot, ended: false })
    }

    /// Stops admission and returns once every accepted item has finished (ran to completion, to
    /// its deadline, or was cancelled) and the worker has exited. Idempotent; callable from any
    /// handle. Called from inside the handler, it only stops admission.
    ///
    /// # Examples
    ///
    /// ```
    /// # use latchless::batch::{Batcher, Joined, Step, StepHandler};
    /// # struct Done;
    /// # impl StepHandler for Done {
    /// #     type Req = u8;
    /// #     type State = ();
    /// #     type Chunk = ();
    /// #     type Out = u8;
    /// #     fn join(&mut self, xs: Vec<u8>) -> Vec<Joined<(), u8>> {
    /// #         xs.into_iter().map(Joined::Finished).collect()
    /// #     }
    /// #     fn step(&mut self, _: &mut [()]) -> Vec<Step<(), u8>> { Vec::new() }
    /// # }
    /// let b = Batcher::builder().spawn_steps(Done).unwrap();
    /// let mut s = b.submit(1).unwrap();
    /// b.shutdown();
    /// assert_eq!(s.try_next().map(|i| i.is_done()), Some(true)); // drained first
    /// assert!(b.submit(2).is_err());
    /// ```
    pub fn shutdown(&self) {
        self.owner.shutdown();
    }

    /// What the batcher has done so far. Here `batches` counts steps and `batch_sizes` the
    /// number of items in each step; `completed`, `failed`, `expired` and `cancelled` count
    /// items, each accepted item once when it leaves; `queue_wait` is the total time items
    /// waited between `submit` and their join.
    ///
    /// # Examples
    ///
    /// ```
    /// # use latchless::batch::{Batcher, Joined, Step, StepHandler};
    /// # struct Done;
    /// # impl StepHandler for Done {
    /// #     type Req = u8;
    /// #     type State = ();
    /// #     type Chunk = ();
    /// #     type Out = u8;
    /// #     fn join(&mut self, xs: Vec<u8>) -> Vec<Joined<(), u8>> {
    /// #         xs.into_iter().map(Joined::Finished).collect()
    /// #     }
    /// #     fn step(&mut self, _: &mut [()]) -> Vec<Step<(), u8>> { Vec::new() }
    /// # }
    /// let b = Batcher::builder().spawn_steps(Done).unwrap();
    /// assert_eq!(b.submit(1).unwrap().count(), 1);
    /// b.shutdown();
    /// let s = b.stats();
    /// assert_eq!((s.submitted, s.completed), (1, 1));
    /// ```
    pub fn stats(&self) -> BatchStats {
        let inner = &self.owner.inner;
        let c = &inner.counters;
        let mut stats = BatchStats {
            submitted: c.submitted.sum(),
            refused_overloaded: c.refused_overloaded.sum(),
            refused_shutting_down: c.refused_shutting_down.sum(),
            refused_too_costly: c.refused_too_costly.sum(),
            ..BatchStats::default()
        };
        for record in inner.records.iter() {
            record.lock().counts.add_to(&mut stats);
        }
        stats
    }

    /// Distributions so far, every worker's merged, in the same [`BatchHistograms`] as
    /// [`Batcher::histograms`](super::Batcher::histograms), where a batch is one step:
    ///
    /// - `batch_size`: per step, the items running in it (one value per step, as
    ///   [`stats`](Self::stats)`().batches` counts them);
    /// - `compute_time`: per step, microseconds [`StepHandler::step`] ran (a join's prefill is not
    ///   a step: its time shows in the joining items' latency and in the running items' gaps
    ///   between chunks);
    /// - `queue_time`: per item that joined, microseconds from `submit` to the start of its
    ///   join (items that expired or were cancelled in the queue never join, and are not
    ///   recorded);
    /// - `latency`: per item that got its final item from the handler (its output, or a
    ///   handler fault), microseconds from `submit` to that final item (items that expired or
    ///   were cancelled are counted in [`stats`](Self::stats) instead);
    /// - `classes`: queue time and latency by priority class, as above.
    ///
    /// Each worker records into its own histograms, once per join, per step and per finished
    /// item; reading locks each in turn (briefly: a worker waits for it at most the time of
    /// one merge).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{Batcher, Joined, Step, StepHandler};
    ///
    /// /// Each item runs `n` steps, streaming nothing.
    /// struct Steps;
    /// impl StepHandler for Steps {
    ///     type Req = u32;
    ///     type State = u32;
    ///     type Chunk = ();
    ///     type Out = ();
    ///     fn join(&mut self, ns: Vec<u32>) -> Vec<Joined<u32, ()>> {
    ///         ns.into_iter().map(Joined::Running).collect()
    ///     }
    ///     fn step(&mut self, items: &mut [u32]) -> Vec<Step<(), ()>> {
    ///         items
    ///             .iter_mut()
    ///             .map(|n| if *n <= 1 { Step::Finish(()) } else { *n -= 1; Step::Continue })
    ///             .collect()
    ///     }
    /// }
    ///
    /// let b = Batcher::builder().max_batch_size(4).spawn_steps(Steps).unwrap();
    /// let streams: Vec<_> = (1..=10).map(|n| b.submit(n).unwrap()).collect();
    /// for s in streams {
    ///     assert_eq!(s.count(), 1); // the final item only
    /// }
    /// b.shutdown();
    /// let h = b.histograms();
    /// assert_eq!((h.queue_time.len(), h.latency.len()), (10, 10)); // one value per item
    /// assert_eq!(h.batch_size.len(), b.stats().batches); // one value per step
    /// assert!(h.batch_size.max() <= 4);
    /// println!("p99 latency {} us, mean step {:.1} items", h.latency.quantile(0.99), h.batch_size.mean());
    /// ```
    pub fn histograms(&self) -> BatchHistograms {
        let inner = &self.owner.inner;
        super::histogram::merged(inner.records.iter().map(|r| &**r), inner.classes.len())
    }

    /// Items accepted and not yet finished, waiting or running (a snapshot).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{Batcher, Joined, Step, StepHandler};
    ///
    /// struct Done;
    /// impl StepHandler for Done {
    ///     type Req = u8;
    ///     type State = ();
    ///     type Chunk = ();
    ///     type Out = u8;
    ///     fn join(&mut self, xs: Vec<u8>) -> Vec<Joined<(), u8>> {
    ///         xs.into_iter().map(Joined::Finished).collect()
    ///     }
    ///     fn step(&mut self, _: &mut [()]) -> Vec<Step<(), u8>> { Vec::new() }
    /// }
    ///
    /// let b = Batcher::builder().spawn_steps(Done).unwrap();
    /// b.shutdown();
    /// assert_eq!(b.in_flight(), 0);
    /// ```
    pub fn in_flight(&self) -> u64 {
        self.owner.inner.in_flight.get()
    }
}
